"""A deliberately plain upstream for client benchmarks: the standard library's threaded HTTP
server, HTTP/1.1 keep-alive, serving the shapes of Finicity customers/accounts and MX
users/members under ``/finicity`` and ``/mx``.

Independent of the sandbox on purpose: no framework, no auth checks, no scenario, so that
what a client costs per request can be compared with what a minimal server costs.

Run: ``python bench/plain_upstream.py --port 0 --customers 10000 --users 1000``; it prints
``listening on http://127.0.0.1:PORT`` and serves until killed.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

EPOCH = 1_700_000_000
INSTITUTIONS = 50
CODES = (0, 0, 0, 0, 0, 0, 185, 103, 901, 0)
STATUSES = ("CONNECTED",) * 6 + ("CHALLENGED", "DENIED", "DEGRADED", None)


def customer_id(i: int) -> str:
    return str(1_005_000_000 + i)


def user_guid(i: int) -> str:
    return f"USR-{i:08d}-0000-4000-8000-000000000000"


def account(customer: int, k: int) -> dict:
    n = customer * 3 + k
    return {
        "id": str(5_011_000_000 + n), "number": "201940541", "accountNumberDisplay": "7528",
        "realAccountNumberLast4": "5678", "name": "Super Checking", "balance": 401.26,
        "type": "checking", "aggregationStatusCode": CODES[n % len(CODES)], "status": "active",
        "customerId": customer_id(customer), "institutionId": str(4000 + n % INSTITUTIONS),
        "balanceDate": EPOCH, "aggregationSuccessDate": EPOCH - 86400,
        "aggregationAttemptDate": EPOCH, "createdDate": EPOCH - 10**7,
        "lastUpdatedDate": EPOCH, "linkedAccountDate": EPOCH - 10**7, "marketSegment": "personal",
        "currency": "USD", "lastTransactionDate": EPOCH, "oldestTransactionDate": EPOCH - 10**7,
        "institutionLoginId": 1_007_000_000 + customer, "authorizationExpires": False,
        "displayPosition": k + 1, "detail": {"availableBalanceAmount": 1234.56},
    }


def member(user: int, k: int) -> dict:
    n = user * 2 + k
    return {
        "aggregated_at": "2023-11-14T22:13:20.000Z", "background_aggregation_is_disabled": False,
        "connection_status": STATUSES[n % len(STATUSES)], "connection_status_message": "text",
        "guid": f"MBR-{n:08d}-0000-4000-8000-000000000000", "id": None,
        "institution_code": f"bank{n % INSTITUTIONS}",
        "institution_guid": f"INS-{n % INSTITUTIONS:08d}", "is_being_aggregated": False,
        "is_managed_by_user": False, "is_manual": False, "is_oauth": False, "metadata": None,
        "most_recent_job_guid": None, "name": "A Bank", "needs_updated_credentials": False,
        "oauth_window_uri": None, "successfully_aggregated_at": "2023-11-13T22:13:20.000Z",
        "use_cases": ["PFM"], "user_guid": user_guid(user), "user_id": None,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    customers = 0
    users = 0

    def log_message(self, format, *args):
        pass

    def answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/finicity/aggregation/v2/partners/authentication":
            self.answer(200, {"token": "plain-token"})
        else:
            self.answer(404, {"code": 404, "message": "not here"})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        if parts[0] == "finicity":
            self.finicity(parts[1:], query)
        elif parts[0] == "mx":
            self.mx(parts[1:], query)
        else:
            self.answer(404, {"code": 404, "message": "not here"})

    def finicity(self, parts: list[str], query: dict[str, str]) -> None:
        if parts == ["aggregation", "v1", "customers"]:
            start, limit = int(query.get("start", 1)), int(query.get("limit", 25))
            ids = range(start - 1, min(start - 1 + limit, self.customers))
            self.answer(200, {"found": self.customers, "displaying": len(ids),
                              "moreAvailable": start - 1 + limit < self.customers,
                              "customers": [{"id": customer_id(i), "username": f"user{i}",
                                             "type": "active", "createdDate": str(EPOCH)}
                                            for i in ids]})
        elif parts[:3] == ["aggregation", "v1", "customers"] and parts[4:] == ["accounts"]:
            i = int(parts[3]) - 1_005_000_000
            if not 0 <= i < self.customers:
                self.answer(404, {"code": 14001, "message": "Customer not found"})
                return
            self.answer(200, {"accounts": [account(i, k) for k in range(1 + i % 3)]})
        elif parts[:3] == ["institution", "v2", "institutions"] and len(parts) == 4:
            self.answer(200, {"institution": {"id": int(parts[3]), "name": f"Bank {parts[3]}",
                                              "displayName": f"Bank {parts[3]}", "status": "online"}})
        else:
            self.answer(404, {"code": 404, "message": "not here"})

    def mx(self, parts: list[str], query: dict[str, str]) -> None:
        page, per_page = int(query.get("page", 1)), int(query.get("records_per_page", 25))
        if parts == ["users"]:
            ids = range((page - 1) * per_page, min(page * per_page, self.users))
            self.answer(200, {"users": [{"guid": user_guid(i), "id": None, "email": None,
                                         "is_disabled": False, "metadata": None} for i in ids],
                              "pagination": {"current_page": page, "per_page": per_page,
                                             "total_entries": self.users,
                                             "total_pages": -(-self.users // per_page)}})
        elif len(parts) == 3 and parts[0] == "users" and parts[2] == "members":
            i = int(parts[1][4:12])
            members = [member(i, k) for k in range(1 + i % 2)]
            self.answer(200, {"members": members, "pagination": {
                "current_page": 1, "per_page": per_page, "total_entries": len(members),
                "total_pages": 1}})
        elif len(parts) == 2 and parts[0] == "institutions":
            self.answer(200, {"institution": {"code": parts[1], "name": f"Bank {parts[1]}"}})
        else:
            self.answer(404, {"error": {"message": "not here"}})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 64 clients connect at once


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    args = parser.parse_args()
    Handler.customers, Handler.users = args.customers, args.users
    server = Server(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.exit(0)


if __name__ == "__main__":
    main()
