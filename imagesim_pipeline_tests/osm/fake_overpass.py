"""An Overpass-compatible HTTP server for tests, answering bbox queries from a .osm.pbf.

Run: python fake_overpass.py PBF PORT. It implements the Overpass ``[bbox:s,w,n,e]`` + ``out
geom`` semantics on its own (pure Python geometry, no imagesim code), so the PBF route can be
checked against it. ``POST /_script`` with a JSON list of behaviours makes the next requests
misbehave, one behaviour per request: {"status": 429, "retry_after": "1"}, {"status": 504},
{"sleep": 5}, {"html": true}, {"truncate": true}, {"remark": "runtime error: ..."}.
``GET /_stats`` returns {"requests": n}.
"""

from __future__ import annotations

import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import osmium

SNAPSHOT = "2024-02-29T12:00:00Z"


def load(pbf: str):
    nodes, ways, relations = {}, {}, {}
    for obj in osmium.FileProcessor(pbf):
        if obj.is_node():
            nodes[obj.id] = (obj.location.lon, obj.location.lat, {t.k: t.v for t in obj.tags})
        elif obj.is_way():
            ways[obj.id] = ([n.ref for n in obj.nodes], {t.k: t.v for t in obj.tags})
        else:
            relations[obj.id] = ([(m.type, m.ref, m.role) for m in obj.members], {t.k: t.v for t in obj.tags})
    return nodes, ways, relations


def inside(p, s, w, n, e):
    return s <= p[1] <= n and w <= p[0] <= e


def segment_hits_box(a, b, s, w, n, e):
    """Liang-Barsky clipping of segment a-b against the box."""
    x0, y0 = a
    dx, dy = b[0] - a[0], b[1] - a[1]
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x0 - w), (dx, e - x0), (-dy, y0 - s), (dy, n - y0)):
        if p == 0:
            if q < 0:
                return False
        else:
            t = q / p
            if p < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
            if t0 > t1:
                return False
    return True


def rnd(v):
    return round(v, 7)


class Handler(BaseHTTPRequestHandler):
    data = None
    script: list = []
    requests = 0

    def log_message(self, *args):
        pass

    def _send(self, status, body: bytes, ctype="application/json", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/_stats":
            self._send(200, json.dumps({"requests": Handler.requests}).encode())
        else:
            self._send(404, b"{}")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length).decode()
        if self.path == "/_script":
            Handler.script = json.loads(raw)
            Handler.requests = 0
            self._send(200, b"{}")
            return
        Handler.requests += 1
        behaviour = Handler.script.pop(0) if Handler.script else {}
        if "sleep" in behaviour:
            time.sleep(behaviour["sleep"])
        if "status" in behaviour:
            headers = {"Retry-After": behaviour["retry_after"]} if "retry_after" in behaviour else {}
            self._send(behaviour["status"], b"<html><body>busy</body></html>", "text/html", headers)
            return
        if behaviour.get("html"):
            self._send(200, b"<!DOCTYPE html><html><body>Error: runtime error</body></html>", "text/html")
            return
        query = parse_qs(raw)["data"][0]
        match = re.search(r"\[bbox:([-\d.]+),([-\d.]+),([-\d.]+),([-\d.]+)\]", query)
        s, w, n, e = (float(v) for v in match.groups())
        body = json.dumps(self.answer(s, w, n, e)).encode()
        if behaviour.get("truncate"):
            body = body[: len(body) // 2]
        if "remark" in behaviour:
            body = json.dumps({"version": 0.6, "elements": [], "remark": behaviour["remark"]}).encode()
        self._send(200, body)

    def answer(self, s, w, n, e):
        nodes, ways, relations = Handler.data
        elements = []
        for nid, (lon, lat, tags) in sorted(nodes.items()):
            if tags and inside((lon, lat), s, w, n, e):
                elements.append({"type": "node", "id": nid, "lat": rnd(lat), "lon": rnd(lon), "tags": tags})
        selected_ways = set()

        def coords_of(refs):
            return [(nodes[r][0], nodes[r][1]) if r in nodes else None for r in refs]

        def geometry(coords):
            return [{"lat": rnd(c[1]), "lon": rnd(c[0])} if c else None for c in coords]

        def bounds(coords):
            pts = [c for c in coords if c]
            return {"minlat": rnd(min(p[1] for p in pts)), "minlon": rnd(min(p[0] for p in pts)),
                    "maxlat": rnd(max(p[1] for p in pts)), "maxlon": rnd(max(p[0] for p in pts))}

        for wid, (refs, tags) in sorted(ways.items()):
            coords = coords_of(refs)
            pts = [c for c in coords if c]
            hit = any(inside(p, s, w, n, e) for p in pts) or any(
                segment_hits_box(a, b, s, w, n, e) for a, b in zip(pts, pts[1:]))
            if hit:
                selected_ways.add(wid)
                el = {"type": "way", "id": wid, "bounds": bounds(coords), "nodes": refs, "geometry": geometry(coords)}
                if tags:
                    el["tags"] = tags
                elements.append(el)
        for rid, (members, tags) in sorted(relations.items()):
            hit = any((t == "w" and r in selected_ways) or (t == "n" and r in nodes and inside(nodes[r][:2], s, w, n, e))
                      for t, r, _ in members)
            if not hit:
                continue
            out, allc = [], []
            for t, r, role in members:
                m = {"type": {"n": "node", "w": "way", "r": "relation"}[t], "ref": r, "role": role}
                if t == "n" and r in nodes:
                    m.update({"lat": rnd(nodes[r][1]), "lon": rnd(nodes[r][0])})
                    allc.append(nodes[r][:2])
                elif t == "w" and r in ways:
                    coords = coords_of(ways[r][0])
                    m["geometry"] = geometry(coords)
                    allc.extend(coords)
                out.append(m)
            el = {"type": "relation", "id": rid}
            if any(allc):
                el["bounds"] = bounds(allc)
            el["members"] = out
            if tags:
                el["tags"] = tags
            elements.append(el)
        return {"version": 0.6, "generator": "fake-overpass", "osm3s": {"timestamp_osm_base": SNAPSHOT},
                "elements": elements}


if __name__ == "__main__":
    Handler.data = load(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
    print("ready", flush=True)
    server.serve_forever()
