"""``streamscore admin``: the Serve app's admin API from the command line (load, routing, release, retire).

example: streamscore admin load digits 2
example: streamscore admin routing digits --set '{"weights": {"1": 95, "2": 5}}'
example: streamscore admin routing digits --set '{"weights": {"1": 95, "2": 5}, "guard": {"min_agreement": 0.95}}'
example: streamscore admin release digits 2
example: streamscore admin retire digits 1

The token comes from ``--token`` or ``STREAMSCORE_ADMIN_TOKEN``; the app from ``--url`` (default
http://127.0.0.1:8000).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from common.errors import ConfigError
from jobs.exit_codes import ExitCode
from jobs.serve import DEFAULT_PORT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    url = f"http://127.0.0.1:{DEFAULT_PORT}"
    parser.add_argument("--url", default=url, help=f"the app (default: {url})")
    parser.add_argument("--token", help="admin token (default: STREAMSCORE_ADMIN_TOKEN)")
    actions = parser.add_subparsers(dest="admin_command", required=True)
    load = actions.add_parser(
        "load",
        help="load and check a version; it can take traffic once it passes",
        epilog="example: streamscore admin load efficientnet-lite0 2",
    )
    retire = actions.add_parser(
        "retire",
        help="retire a version that no routing sends traffic to",
        epilog="example: streamscore admin retire efficientnet-lite0 1",
    )
    release = actions.add_parser(
        "release",
        help="let routing name a version its guard rolled back (it takes no traffic until routing says so)",
        epilog="example: streamscore admin release efficientnet-lite0 2",
    )
    for sub in (load, retire, release):
        sub.add_argument("name")
        sub.add_argument("version")
    routing = actions.add_parser(
        "routing",
        help="show a model's routing (with its guard, rolled-back versions and shadow comparisons), or replace it",
        epilog="""example: streamscore admin routing efficientnet-lite0 --set '{"weights": {"1": 95, "2": 5}}'""",
    )
    routing.add_argument("name")
    routing.add_argument("--set", metavar="JSON", help='e.g. \'{"weights": {"1": 95, "2": 5}}\'')


def call(url: str, token: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url.rstrip("/") + path, data=body, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, _json(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _json(error.read())
    except urllib.error.URLError as error:
        raise ConfigError(f"cannot reach {url}: {error.reason}") from None


def _json(body: bytes) -> dict:
    """The app answers JSON; a proxy in front of it may not (an HTML 502): then the text, as the error."""
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        return {"error": body.decode(errors="replace")[:500]}
    return answer if isinstance(answer, dict) else {"answer": answer}


def run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("STREAMSCORE_ADMIN_TOKEN")
    if not token:
        raise ConfigError("give --token or set STREAMSCORE_ADMIN_TOKEN")
    if args.admin_command == "load":
        status, body = call(args.url, token, "POST", f"/admin/models/{args.name}/versions/{args.version}/load")
    elif args.admin_command == "release":
        status, body = call(args.url, token, "POST", f"/admin/models/{args.name}/versions/{args.version}/release")
    elif args.admin_command == "retire":
        status, body = call(args.url, token, "DELETE", f"/admin/models/{args.name}/versions/{args.version}")
    elif args.set:
        status, body = call(args.url, token, "PUT", f"/admin/models/{args.name}/routing", args.set.encode())
    else:
        status, body = call(args.url, token, "GET", f"/admin/models/{args.name}/routing")
    print(json.dumps(body, indent=2))
    if status >= 400:
        print(f"streamscore: admin call failed with HTTP {status}", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK
