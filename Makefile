# The two commands of the quickstart. Both work on a fresh machine with Python >= 3.11.
.PHONY: serve test lint

serve:
	scripts/bootstrap.sh
	.venv/bin/localroute serve

test:
	scripts/bootstrap.sh
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest

lint:
	.venv/bin/ruff check localroute tests bench
	.venv/bin/ruff format --check localroute tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports
