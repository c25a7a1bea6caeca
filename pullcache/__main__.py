"""`python -m pullcache` runs the CLI."""
from pullcache.cli import main

main()
