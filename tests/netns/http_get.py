#!/usr/bin/python3
"""GET a URL and print the body: what coop.sh asks of curl, for builds where
curl cannot run under `vpmtun exec` (with the ASan runtime preloaded, curl
deadlocks at start in p11-kit's constructor). Exit 7 when it cannot
connect, as curl does, with the reason on stderr."""
import sys
import urllib.error
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        sys.stdout.write(r.read().decode())
except (urllib.error.URLError, OSError) as e:
    print(f"http_get: Failed to connect: {e}", file=sys.stderr)
    sys.exit(7)
