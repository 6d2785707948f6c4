"""`examhub import FILE --bank SLUG`: bulk-import questions into a bank, as POST /api/banks/{id}/import does.

The same parsers (storage/importers.py) and the same transaction (storage/questions.py) as the endpoint;
progress goes to stderr, the per-row report summary to stdout. Exit status: 0 when every row was imported
or was a duplicate, 1 when some rows failed, 2 when nothing could be imported (unknown bank, unreadable file).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TextIO

from server.settings import Settings
from storage import importers, pg
from storage import questions as repo
from storage.migrate import migrate

PROGRESS_EVERY = 500  # rows between progress lines, at least


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("import", help="import questions into a bank from JSON, CSV or Moodle XML")
    p.add_argument("file", type=Path, help="the file to import (- reads standard input)")
    p.add_argument("--bank", required=True, help="the bank's slug")
    p.add_argument("--format", choices=importers.FORMATS, help="default: from the extension (.json, .csv, .xml)")
    p.add_argument("--dry-run", action="store_true", help="validate and report, keep nothing")
    p.set_defaults(run=import_file)


class _Progress:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        rate = done / max(time.monotonic() - self.started, 1e-6)
        print(f"examhub: {done}/{total} rows ({100 * done // total}%, {rate:,.0f} rows/s)", file=self.out, flush=True)


def _read_and_parse(path: Path, fmt: importers.Format) -> list[importers.ParsedRow]:
    data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    return importers.parse(fmt, data, max_bytes=None)  # the upload limit guards the server, not this command


async def import_file(settings: Settings, args: argparse.Namespace, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    path: Path = args.file
    fmt = args.format or importers.format_for_filename(path.name)
    if fmt is None:
        print(f"examhub: cannot tell the format of {path.name}; give --format json|csv|moodle", file=err)
        return 2
    try:
        rows = await asyncio.to_thread(_read_and_parse, path, fmt)
    except OSError as exc:
        print(f"examhub: cannot read {path}: {exc.strerror}", file=err)
        return 2
    except importers.ImportFormatError as exc:
        print(f"examhub: {path.name}: {exc}", file=err)
        return 2
    print(f"examhub: {len(rows)} rows read from {path.name} ({fmt})", file=err, flush=True)
    assert settings.database_url is not None
    pool = await pg.create_pool(settings.database_url, 1, 1)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        bank_id = await repo.bank_id_for_slug(pool, args.bank)
        if bank_id is None:
            print(f"examhub: no bank with slug {args.bank!r}", file=err)
            return 2
        progress = _Progress(err) if len(rows) > PROGRESS_EVERY else None
        every = max(PROGRESS_EVERY, len(rows) // 20)  # at most ~20 progress lines
        report = await repo.import_rows(pool, bank_id, rows, dry_run=args.dry_run, progress=progress, every=every)
    finally:
        await pool.close()
    for r in report.rows:
        if not r.ok:
            print(f"row {r.row}: {r.error}")
    verb = "would import" if report.dry_run else "imported"
    print(f"examhub: {verb} {report.imported}, duplicates {report.duplicates}, failed {report.failed}"
          f" (of {len(report.rows)} rows) into bank {args.bank}")  # fmt: skip
    return 1 if report.failed else 0
