# -*- test-case-name: tests.test_warm -*-
"""
The ``artifactvault`` console script: tools beside the daemon (which runs
as ``twistd artifactvault``).

    artifactvault warm --vault http://HOST:PORT -r requirements.txt --image dockerhub/library/alpine:3.20
"""

from __future__ import annotations

import sys

USAGE = """usage: artifactvault COMMAND [options]

commands:
  warm    fill the vault ahead of time: requirements files, images, files,
          Debian packages (apt-get resolves), npm lockfiles
          (artifactvault warm --help)

The daemon itself runs as: twistd -n artifactvault --config FILE
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "warm":
        from artifactvault import warm
        return warm.main(rest)
    sys.stderr.write(f"artifactvault: unknown command {command!r}\n\n{USAGE}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
