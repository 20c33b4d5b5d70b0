"""Manage CurveZMQ keys and the client allow-lists of the engine and the inference API.

``telediag keys generate NAME --dir DIR`` writes NAME.key (public) and NAME.key_secret;
``telediag keys allow FILE.key --allow-dir DIR`` admits a client;
``telediag keys revoke NAME --allow-dir DIR`` removes it; ``telediag keys list`` shows them.
Servers (``telediag run`` with ``[security] curve = true``, ``telediag api --curve ...``)
re-read the folder on every new connection's handshake, so allow/revoke need no restart;
the inference API also re-checks every request, so a revoke cuts off its open connections
too (see ``docs/security.md``).
"""

from __future__ import annotations

import argparse

from telediag.transports import security


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_cmd", metavar="ACTION")
    sub.required = True
    g = sub.add_parser("generate", help="create NAME.key and NAME.key_secret")
    g.add_argument("name")
    g.add_argument("--dir", default=".", help="output folder (default .)")
    a = sub.add_parser("allow", help="add a client's public key to an allow-list folder")
    a.add_argument("key_file")
    a.add_argument("--allow-dir", required=True)
    r = sub.add_parser("revoke", help="remove NAME.key from an allow-list folder")
    r.add_argument("name")
    r.add_argument("--allow-dir", required=True)
    lst = sub.add_parser("list", help="list the public keys in an allow-list folder")
    lst.add_argument("--allow-dir", required=True)


def run(args: argparse.Namespace) -> int:
    if args.keys_cmd == "generate":
        pub, sec = security.generate(args.name, args.dir)
        print(f"public key  {pub}  (share it: server key for clients, or allow-list entry)")
        print(f"secret key  {sec}  (keep it; mode 600)")
    elif args.keys_cmd == "allow":
        print(f"allowed {security.allow(args.key_file, args.allow_dir)}")
    elif args.keys_cmd == "revoke":
        if not security.revoke(args.name, args.allow_dir):
            print(f"{args.name}.key was not in {args.allow_dir}")
            return 1
        print(f"revoked {args.name}")
    else:
        for name, key in security.allowed(args.allow_dir).items():
            print(f"{name:<24} {key.decode()}")
    return 0
