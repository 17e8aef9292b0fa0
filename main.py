"""MTN Sails command line: `python main.py --help`."""
from mtn_sails.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
