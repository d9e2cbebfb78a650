"""``python -m ciap_lib <command>``: see ``ciap_lib.cli``."""
from ciap_lib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
