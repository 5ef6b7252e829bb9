"""The llama.cpp worker with timestamps (bench.ttft_breakdown): the stream's entry, llama.cpp's call
and first content chunk (on the decode thread), and the first content bytes the worker sends."""

from __future__ import annotations

import sys
from typing import Any

from _marks import has_content, mark


def patch() -> None:
    from localroute.rungs.llamacpp import runner

    init = runner.Runner.__init__

    def probed_init(self: Any, llm: Any, *args: Any, **kw: Any) -> None:
        create = llm.create_chat_completion

        def probed_create(*a: Any, **k: Any) -> Any:
            mark("w_call")
            out = create(*a, **k)
            if not k.get("stream"):
                return out

            def chunks() -> Any:
                seen = False
                for chunk in out:
                    if not seen and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        seen = True
                        mark("w_llama")
                    yield chunk

            return chunks()

        llm.create_chat_completion = probed_create
        init(self, llm, *args, **kw)

    runner.Runner.__init__ = probed_init  # type: ignore[method-assign]

    stream = runner.Runner.stream

    async def probed_stream(self: Any, body: Any, gen: Any) -> Any:
        mark("w_in")
        seen = False
        async for part in stream(self, body, gen):
            if not seen and has_content(part):
                seen = True
                mark("w_yield")
            yield part

    runner.Runner.stream = probed_stream  # type: ignore[method-assign]


if __name__ == "__main__":
    patch()
    from localroute.rungs.llamacpp.worker import main

    sys.exit(main())
