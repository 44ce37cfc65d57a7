#!/usr/bin/env python3
"""The measuring half of bench/query (see there). Subcommands:

  prepare MARIADB_SOCKET DB TABLE OUT_DIR NULL_TOKEN
      Reads the table from MariaDB and writes OUT_DIR/orders.csv (NULL as NULL_TOKEN),
      OUT_DIR/orders.sql (its CREATE TABLE) and OUT_DIR/orders.sqlite (the same rows for
      Datasette, with the same index: the primary key).
  latency MARIADB_SOCKET DB PMA_URL PMA_NOCACHE_URL DATASETTE_URL KEY ROUNDS OUT.tsv
      Each dashboard query, one client at a time over a warm connection: MariaDB (PyMySQL),
      pma-cache with its answer cache, pma-cache without it, Datasette. Writes one line per
      (query, system) with the median, p99 and bytes of the answer.
  urls PMA_URL DATASETTE_URL KEY
      Prints "name<TAB>pma-cache URL<TAB>Datasette URL" for each query, for wrk.
"""

import csv
import http.client
import json
import sqlite3
import statistics
import sys
import time
import urllib.parse

# (name, MySQL SQL for MariaDB and pma-cache, SQLite SQL for Datasette)
QUERIES = [
    ("daily revenue, 30 days",
     "SELECT DATE(created_at) AS day, SUM(total) AS revenue FROM orders "
     "WHERE created_at >= DATE_SUB('2022-12-31 23:59:59', INTERVAL 30 DAY) "
     "GROUP BY DATE(created_at) ORDER BY day",
     "SELECT date(created_at) AS day, SUM(total) AS revenue FROM orders "
     "WHERE created_at >= datetime('2022-12-31 23:59:59', '-30 days') "
     "GROUP BY date(created_at) ORDER BY day"),
    ("orders by status",
     "SELECT financial_status, COUNT(*) AS n FROM orders GROUP BY financial_status ORDER BY n DESC",
     "SELECT financial_status, COUNT(*) AS n FROM orders GROUP BY financial_status ORDER BY n DESC"),
    ("top 10 customers",
     "SELECT email, SUM(total) AS revenue FROM orders GROUP BY email ORDER BY revenue DESC, email LIMIT 10",
     "SELECT email, SUM(total) AS revenue FROM orders GROUP BY email ORDER BY revenue DESC, email LIMIT 10"),
    ("one order by id",
     "SELECT * FROM orders WHERE id = 4242",
     "SELECT * FROM orders WHERE id = 4242"),
    ("text search in note",
     "SELECT id, note FROM orders WHERE note LIKE '%Order 77%' ORDER BY id LIMIT 20",
     "SELECT id, note FROM orders WHERE note LIKE '%Order 77%' ORDER BY id LIMIT 20"),
    ("date range and filter",
     "SELECT COUNT(*) AS n, SUM(total) AS revenue FROM orders WHERE created_at "
     "BETWEEN '2022-03-01 00:00:00' AND '2022-03-31 23:59:59' AND financial_status = 'paid'",
     "SELECT COUNT(*) AS n, SUM(total) AS revenue FROM orders WHERE created_at "
     "BETWEEN '2022-03-01 00:00:00' AND '2022-03-31 23:59:59' AND financial_status = 'paid'"),
]
KEY_LOOKUP = "/tables/orders/4242"


def connect_mariadb(socket, db):
    import pymysql
    return pymysql.connect(unix_socket=socket, user="root", database=db, charset="utf8mb4")


def prepare(socket, db, table, out, null):
    conn = connect_mariadb(socket, db)
    with conn.cursor() as cur:
        cur.execute(f"SHOW CREATE TABLE `{table}`")
        create = cur.fetchone()[1]
        cur.execute(f"SELECT * FROM `{table}` ORDER BY id")
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
    with open(f"{out}/orders.sql", "w") as f:
        f.write(create + ";\n")
    text = lambda v: null if v is None else str(v)
    with open(f"{out}/orders.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([text(v) for v in r])
    path = f"{out}/orders.sqlite"
    lite = sqlite3.connect(path)
    lite.execute("DROP TABLE IF EXISTS orders")
    # SQLite's own types: integers, REAL for decimals (it has no exact decimal), text for dates.
    types = {"id": "INTEGER PRIMARY KEY"}
    sample = rows[0]
    decl = []
    for i, c in enumerate(columns):
        if c in types:
            decl.append(f'"{c}" {types[c]}')
        elif type(sample[i]).__name__ == "Decimal":
            decl.append(f'"{c}" REAL')
        elif isinstance(sample[i], int):
            decl.append(f'"{c}" INTEGER')
        else:
            decl.append(f'"{c}" TEXT')
    lite.execute(f"CREATE TABLE orders ({', '.join(decl)})")
    conv = lambda v: None if v is None else (float(v) if type(v).__name__ == "Decimal" else
                                             (str(v) if not isinstance(v, (int, float, str)) else v))
    lite.executemany(f"INSERT INTO orders VALUES ({', '.join('?' * len(columns))})",
                     ([conv(v) for v in r] for r in rows))
    lite.commit()
    lite.close()
    print(len(rows), "rows", file=sys.stderr)


class Http:
    """One keep-alive connection, as a dashboard's client keeps."""

    def __init__(self, base, headers):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.headers = headers
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def get(self, path):
        try:
            self.conn.request("GET", path, headers=self.headers)
            r = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # An idle keep-alive connection the server closed (uvicorn's after 5 s): once more,
            # on a new one (only ever in the untimed warm-up, which comes first).
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            self.conn.request("GET", path, headers=self.headers)
            r = self.conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise SystemExit(f"{path}: {r.status} {body[:300]!r}")
        return body


def pma_path(sql):
    return "/query?" + urllib.parse.urlencode({"sql": sql})


def datasette_path(sql):
    return "/orders.json?" + urllib.parse.urlencode({"sql": sql, "_shape": "array"})


def timed(fn, rounds):
    fn()  # warm
    fn()
    times = []
    size = 0
    for _ in range(rounds):
        t = time.perf_counter()
        size = fn()
        times.append(time.perf_counter() - t)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return statistics.median(times) * 1000, p99 * 1000, size


def latency(socket, db, pma, pma_nocache, datasette, key, rounds, out):
    rounds = int(rounds)
    conn = connect_mariadb(socket, db)
    headers = {"X-API-Key": key, "Accept-Encoding": "identity"}
    systems = {
        "pma-cache": Http(pma, headers),
        "pma-cache, no answer cache": Http(pma_nocache, headers),
        "Datasette": Http(datasette, {}),
    }
    lines = []
    for name, mysql_sql, sqlite_sql in QUERIES:
        def maria():
            with conn.cursor() as cur:
                cur.execute(mysql_sql)
                rows = cur.fetchall()
            return len(json.dumps(rows, default=str))
        lines.append((name, "MariaDB", *timed(maria, rounds)))
        for system, client in systems.items():
            path = datasette_path(sqlite_sql) if system == "Datasette" else pma_path(mysql_sql)
            lines.append((name, system, *timed(lambda: len(client.get(path)), rounds)))
        if name == "one order by id":
            client = systems["pma-cache"]
            lines.append(("one order by id, /tables/orders/{id}", "pma-cache",
                          *timed(lambda: len(client.get(KEY_LOOKUP)), rounds)))
    with open(out, "w") as f:
        for line in lines:
            f.write("\t".join(str(x) for x in line) + "\n")
            print(*line, sep="\t", file=sys.stderr)


def urls(pma, datasette, key):
    for name, mysql_sql, sqlite_sql in QUERIES:
        print(f"{name}\t{pma}{pma_path(mysql_sql)}\t{datasette}{datasette_path(sqlite_sql)}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"prepare": prepare, "latency": latency, "urls": urls}[command](*args)
