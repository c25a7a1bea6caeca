"""`python -m tests.support.send_timeout_serve SECONDS serve -c proxy.yml`: pullcache with a short send timeout.

The send timeout (pullcache.api.sendfile.SEND_TIMEOUT) is a constant of a minute; tests of clients that
stop reading set it here, in the server process, so they see it pass in seconds.
"""
import sys

from pullcache.api import sendfile
from pullcache.cli import main

sendfile.SEND_TIMEOUT = float(sys.argv.pop(1))
main()
