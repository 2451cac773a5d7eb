# Convenience targets; each is a thin wrapper around scripts/ (the README's commands).
.PHONY: setup test
setup:
	bash scripts/setup.sh
test:
	bash scripts/test.sh
