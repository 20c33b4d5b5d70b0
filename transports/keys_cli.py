"""Manage CurveZMQ keys and the client allow-lists of the engine and the inference API.

``telediag keys generate NAME --dir DIR`` writes NAME.key (public) and NAME.key_secret;
``telediag keys allow FILE.key --allow-dir DIR`` admits a client;
``telediag keys revoke NAME --allow-dir DIR`` removes it; ``telediag keys list`` shows them.
``telediag keys tls --cert FILE --key FILE [--host NAME ...]`` makes a self-signed TLS pair for
the viewer and the HTTP gateway; ``telediag keys user NAME --access FILE --patients bed-1,bed-2``
adds a login (password read from the terminal or ``--password-stdin``; ``--token`` also prints a
bearer token) -- see :mod:`telediag.transports.webauth`.
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
    t = sub.add_parser("tls", help="make a self-signed TLS certificate and key (for trials)")
    t.add_argument("--cert", default="tls/cert.pem", help="certificate file (default tls/cert.pem)")
    t.add_argument("--key", default="tls/key.pem", help="private key file (default tls/key.pem)")
    t.add_argument("--host", action="append", metavar="NAME",
                   help="host name or IP the certificate is for; repeat (default localhost, 127.0.0.1)")
    t.add_argument("--days", type=int, default=365)
    u = sub.add_parser("user", help="add or update a viewer/HTTP-gateway user in an access file")
    u.add_argument("name")
    u.add_argument("--access", required=True, help="access file (TOML; created if missing)")
    u.add_argument("--patients", help="comma-separated patient ids this user may see ('*' = all)")
    u.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    u.add_argument("--token", action="store_true", help="also make a bearer token (printed once)")


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
    elif args.keys_cmd == "tls":
        from telediag.transports.webauth import make_self_signed

        cert, key = make_self_signed(args.cert, args.key, args.host or ["localhost", "127.0.0.1"], args.days)
        print(f"certificate {cert}  (self-signed: browsers warn; give it to clients to trust)")
        print(f"private key {key}  (mode 600)")
    elif args.keys_cmd == "user":
        return _user(args)
    else:
        for name, key in security.allowed(args.allow_dir).items():
            print(f"{name:<24} {key.decode()}")
    return 0


def _user(args: argparse.Namespace) -> int:
    import getpass
    import secrets
    import sys
    from pathlib import Path

    from telediag.transports.webauth import AccessConfig

    path = Path(args.access)
    acc = AccessConfig.load(path) if path.exists() else AccessConfig()
    if args.password_stdin:
        pw = sys.stdin.readline().rstrip("\n")
    else:
        pw = getpass.getpass(f"password for {args.name}: ")
        if pw != getpass.getpass("again: "):
            print("passwords differ", file=sys.stderr)
            return 1
    pats = [x.strip() for x in args.patients.split(",") if x.strip()] if args.patients is not None else None
    token = secrets.token_urlsafe(24) if args.token else None
    acc.set_user(args.name, password=pw or None, patients=pats, token=token)
    acc.save(path)
    print(f"user {args.name} in {path}: patients {sorted(acc.users[args.name].patients) or '(none)'}")
    if token:
        print(f"bearer token (shown once): {token}")
    return 0
