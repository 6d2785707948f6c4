"""`examhub user add`: create a user from the command line (the first admin, say)."""

from __future__ import annotations

import argparse
import getpass

from server.settings import Settings
from storage import pg
from storage import users as repo


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("user", help="manage users")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a user")
    add.add_argument("--username", required=True)
    add.add_argument("--display-name", default="")
    add.add_argument("--role", choices=["student", "proctor", "admin"], default="student")
    add.add_argument("--tier", choices=["free", "enrolled"], default="enrolled")
    add.add_argument("--password", help="default: ask on the terminal")
    add.set_defaults(run=add_user)


async def add_user(settings: Settings, args: argparse.Namespace) -> int:
    password = args.password or getpass.getpass(f"password for {args.username}: ")
    if len(password) < 8:
        print("examhub: the password needs at least 8 characters")
        return 2
    assert settings.database_url is not None
    pool = await pg.create_pool(settings.database_url, 1, 1)
    try:
        user = await repo.create_user(pool, args.username, password, args.display_name or args.username,
                                      tier=args.tier, role=args.role)  # fmt: skip
    except repo.UserExists as exc:
        print(f"examhub: {exc}")
        return 1
    finally:
        await pool.close()
    print(f"examhub: created {user.role} {user.username} ({user.id})")
    return 0
