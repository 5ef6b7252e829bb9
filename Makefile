# The two commands of the quickstart. Both work on a fresh machine with Python >= 3.11.
.PHONY: serve test test-timing lint

serve:
	scripts/bootstrap.sh
	.venv/bin/localroute serve

# The suite runs under coverage (settings in pyproject.toml); the combined figure, gateway and worker
# processes included, is printed at the end. Debian's chromium (the dashboard's browser test) and
# redis-server (the replicas test) are installed first when they can be (root or passwordless
# sudo); otherwise a warning says which test skips.
test:
	scripts/system_deps.sh chromium redis-server
	scripts/bootstrap.sh
	.venv/bin/python -m coverage erase
	HF_HUB_OFFLINE=1 .venv/bin/python -m coverage run -m pytest
	.venv/bin/python -m coverage combine -q
	.venv/bin/python -m coverage report

lint:
	.venv/bin/ruff check localroute tests bench
	.venv/bin/ruff format --check localroute tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports

# The `timing` tests under a CPU hog (stress-ng --cpu 2, or two Python busy loops), as CI runs them.
test-timing:
	scripts/bootstrap.sh
	HF_HUB_OFFLINE=1 scripts/under_hog.sh .venv/bin/python -m pytest -m timing -q
