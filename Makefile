# Shortcuts for those who have make; ./dev.sh is the source of truth (a fresh Debian has no make).
.PHONY: demo test check bootstrap
demo:
	./dev.sh demo
test:
	./dev.sh test
check:
	./dev.sh check
bootstrap:
	./dev.sh bootstrap
