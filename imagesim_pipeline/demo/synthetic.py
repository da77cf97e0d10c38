"""A procedural OSM extract: a made-up landscape with real OSM structure.

The demo world's synthetic area (and the benchmarks' generated extracts). A square of whole
625 m blocks in UTM zone 35 north of Helsinki (away from the real extracts' cells) gets:

* a coarse grid of major roads (``highway=primary|secondary``) with jittered junctions; the
  super-blocks between them are split into parcels of ~150-420 m, some split lines becoming
  local roads (``highway=tertiary|unclassified`` in towns, ``highway=track`` in the country);
* per parcel a district whose kind follows an "urbanity" field (a few town centres): houses
  (``landuse=residential``, ``building=house``, residential streets, playgrounds, construction
  sites, ponds), apartment blocks (with parking and grass), industrial estates (big buildings,
  parking, brownfield yards, rail sidings), retail or commercial centres (big boxes and large car
  parks), farmland (fields, ditches, farmyards), forest (some multipolygons with a clearing),
  parks (paths, ponds, pitches), meadows with scrub, lakes with beaches, quarries and sand,
  cemeteries;
* double-track railways (``railway=rail``) across the area and a yard, meandering rivers
  (``waterway=river`` lines with a ``natural=water`` riverbank polygon) and streams.

Every one of the 13 default labels' tags occurs, at densities that put each label in a good
share of the 156.25 m chip places. Buildings, parking lots and sites keep clear of roads,
railways and rivers. The layout is a function of the seed (same seed, same file bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon, box
from shapely.geometry.base import BaseGeometry

EPSG = 32635  # UTM zone 35N
ORIGIN_UTM = (350_000.0, 6_720_000.0)  # south-west corner: a level-12 cell corner ~60 km NW of Helsinki
BLOCK_M = 625.0  # the area is a whole number of zoom-15 blocks (the dataset's split unit)


def synthetic_bounds(km: float) -> tuple[float, float, float, float]:
    """The UTM bounds (xmin, ymin, xmax, ymax) of a synthetic area about ``km`` x ``km``."""
    side = max(1, round(km * 1000 / BLOCK_M)) * BLOCK_M
    x0, y0 = ORIGIN_UTM
    return (x0, y0, x0 + side, y0 + side)


# --- geometry helpers (local metres, origin at the south-west corner) -----------------------
def _rect(cx: float, cy: float, w: float, h: float, angle: float = 0.0) -> Polygon:
    """A ``w`` x ``h`` rectangle centred on (cx, cy), rotated by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return Polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners])


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, rough: float = 0.25, n: int = 20) -> Polygon:
    """An irregular round shape (a pond, a lake, a wood) of mean radius ``r``."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    radius = np.ones(n)
    for k in (2, 3, 5):
        radius += rough / k * rng.normal() * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    radius = r * np.clip(radius, 0.5, 1.6)
    return Polygon(np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1))


def _meander(rng: np.random.Generator, start: tuple[float, float], heading: float, length: float,
             step: float = 40.0, wander: float = 0.12, pull: float = 0.04) -> np.ndarray:
    """A wandering line: heading changes by a smoothed random walk, pulled back to its mean."""
    n = max(2, int(length / step) + 1)
    xy = np.empty((n, 2))
    xy[0] = start
    turn = 0.0
    h = heading
    for i in range(1, n):
        turn = 0.7 * turn + rng.normal(0, wander)
        h += turn - pull * (h - heading)
        xy[i] = xy[i - 1] + step * np.array([math.cos(h), math.sin(h)])
    return xy


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    """The non-trivial polygons of a geometry (parts of a multi-geometry or collection)."""
    parts = shapely.get_parts(geom) if not geom.is_empty else []
    return [p for p in parts if isinstance(p, Polygon) and p.area > 1.0]


# --- the feature collection -----------------------------------------------------------------
@dataclass
class _Way:
    coords: np.ndarray  # (n, 2) local metres; a closed ring repeats its first point
    tags: dict[str, str]


@dataclass
class _Relation:
    tags: dict[str, str]
    members: list[tuple[int, str]]  # (way index, role)


@dataclass
class _Map:
    """Features in local metres, and the corridors (roads, railways, rivers) that buildings avoid."""

    side: float
    ways: list[_Way] = field(default_factory=list)
    relations: list[_Relation] = field(default_factory=list)
    corridor_parts: list[BaseGeometry] = field(default_factory=list)
    tree: shapely.STRtree | None = None

    def line(self, coords, tags: dict[str, str], corridor: float = 0.0) -> None:
        """A line, clipped to a margin around the area; ``corridor``: half-width kept clear."""
        clip = box(-40, -40, self.side + 40, self.side + 40)
        clipped = LineString(coords).intersection(clip)
        for part in shapely.get_parts(clipped):
            if isinstance(part, LineString) and part.length > 5:
                self.ways.append(_Way(np.asarray(part.coords), tags))
                if corridor:
                    pieces = shapely.segmentize(part, 60.0)
                    pts = np.asarray(pieces.coords)
                    segs = [LineString(pts[i:i + 3]) for i in range(0, len(pts) - 1, 2)]
                    self.corridor_parts += list(shapely.buffer(np.array(segs, dtype=object), corridor))

    def area(self, polygon: BaseGeometry, tags: dict[str, str]) -> int:
        """Closed ways for each part (a part with holes becomes a multipolygon relation)."""
        added = 0
        for part in _polygons(polygon):
            part = shapely.simplify(part, 0.3)
            if not isinstance(part, Polygon) or part.is_empty or part.area < 1.0:
                continue
            if part.interiors:
                members = [(len(self.ways), "outer")]
                self.ways.append(_Way(np.asarray(part.exterior.coords), {}))
                for ring in part.interiors:
                    members.append((len(self.ways), "inner"))
                    self.ways.append(_Way(np.asarray(ring.coords), {}))
                self.relations.append(_Relation({"type": "multipolygon", **tags}, members))
            else:
                self.ways.append(_Way(np.asarray(part.exterior.coords), tags))
            added += 1
        return added

    def freeze_corridors(self) -> None:
        self.tree = shapely.STRtree(np.array(self.corridor_parts, dtype=object))

    def free(self, shapes: list[BaseGeometry]) -> np.ndarray:
        """Which of the shapes keep clear of every corridor."""
        arr = np.array(shapes, dtype=object)
        ok = np.ones(len(arr), dtype=bool)
        if len(arr) and self.tree is not None and len(self.corridor_parts):
            hit, _ = self.tree.query(arr, predicate="intersects")
            ok[hit] = False
        return ok


# --- the landscape --------------------------------------------------------------------------
KINDS = ["houses", "apartments", "industrial", "commercial", "park", "farmland", "forest", "meadow", "lake",
         "quarry", "cemetery"]


def _weights(urbanity: float) -> np.ndarray:
    """Relative odds of each district kind at this urbanity (0 country .. 1 town centre)."""
    u = urbanity
    w = np.array([4 + 20 * u, 1 + 12 * u, 3 + 9 * u, 1.5 + 7 * u, 3 + 5 * u, 24 * (1 - u), 4 + 18 * (1 - u),
                  2 + 3 * (1 - u), 3.0, 4.5, 0.8])
    return w / w.sum()


class _Landscape:
    def __init__(self, side: float, seed: int):
        self.side = side
        self.rng = np.random.default_rng(seed)
        self.map = _Map(side)
        n_towns = 1 + int(side * side / 20e6)
        self.towns = [(self.rng.uniform(0.1, 0.9) * side, self.rng.uniform(0.1, 0.9) * side,
                       self.rng.uniform(1200, 2200), self.rng.uniform(0.7, 1.0)) for _ in range(n_towns)]
        self.n = 0  # running number for names

    def urbanity(self, x: float, y: float) -> float:
        return max(s * math.exp(-((x - tx) ** 2 + (y - ty) ** 2) / r**2) for tx, ty, r, s in self.towns)

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix} {self.n}"

    # Linear structure first: everything else keeps clear of it.
    def major_grid(self) -> list[list[np.ndarray]]:
        rng, side = self.rng, self.side

        def positions() -> list[float]:
            out = [-60.0]
            p = rng.uniform(250, 650)
            while p < side - 200:
                out.append(p)
                p += rng.uniform(800, 1200)
            return out + [side + 60.0]

        xs, ys = positions(), positions()
        junction = [[np.array([x + (rng.uniform(-25, 25) if 0 < i < len(xs) - 1 else 0.0),
                               y + (rng.uniform(-25, 25) if 0 < j < len(ys) - 1 else 0.0)])
                     for j, y in enumerate(ys)] for i, x in enumerate(xs)]
        for i in range(1, len(xs) - 1):
            self._major([junction[i][j] for j in range(len(ys))])
        for j in range(1, len(ys) - 1):
            self._major([junction[i][j] for i in range(len(xs))])
        return junction

    def _major(self, points: list[np.ndarray]) -> None:
        coords = np.array(points)
        mid = coords[len(coords) // 2]
        kind = "primary" if self.urbanity(*mid) > 0.3 or self.rng.random() < 0.4 else "secondary"
        self.map.line(coords, {"highway": kind, "name": self.name("Road"), "lanes": "2"}, corridor=11)

    def railways(self) -> None:
        rng, side = self.rng, self.side
        n_lines = max(1, round(side / 1150))
        for k in range(n_lines):
            angle = (k / n_lines) * math.pi + rng.uniform(-0.25, 0.25)
            through = np.array([rng.uniform(0.15, 0.85) * side, rng.uniform(0.15, 0.85) * side])
            direction = np.array([math.cos(angle), math.sin(angle)])
            normal = np.array([-direction[1], direction[0]])
            half = side * 1.5
            bend = rng.uniform(-0.08, 0.08) * half
            t = np.linspace(-1, 1, int(2 * half / 40))
            centre = through + t[:, None] * half * direction + ((1 - t**2) * bend)[:, None] * normal
            tags = {"railway": "rail", "usage": "main", "gauge": "1524", "name": self.name("Railway")}
            offsets = (-2.3, 2.3) if rng.random() < 0.7 else (0.0,)
            for off in offsets:
                self.map.line(centre + off * normal, {**tags, "electrified": "contact_line"},
                              corridor=8 if off == offsets[0] else 0)
            if k == 0:  # a yard: parallel tracks beside the line
                inside = np.flatnonzero((centre[:, 0] > 0.2 * side) & (centre[:, 0] < 0.8 * side)
                                        & (centre[:, 1] > 0.2 * side) & (centre[:, 1] < 0.8 * side))
                if len(inside) > 20:
                    seg = centre[inside[len(inside) // 2 - 7: len(inside) // 2 + 7]]
                    for m in range(1, 6):
                        self.map.line(seg + (4 + 5 * m) * normal, {"railway": "rail", "service": "yard"},
                                      corridor=5)

    def waters(self) -> None:
        rng, side = self.rng, self.side
        for _ in range(1 + int(side > 6000)):
            horizontal = rng.random() < 0.5
            start = (-60.0, rng.uniform(0.2, 0.8) * side) if horizontal else (rng.uniform(0.2, 0.8) * side, -60.0)
            heading = 0.0 if horizontal else math.pi / 2
            coords = _meander(rng, start, heading, side * 1.4, step=40, wander=0.07, pull=0.06)
            width = rng.uniform(22, 45)
            bank = LineString(coords).buffer(width / 2)
            self.map.area(bank.intersection(box(-40, -40, side + 40, side + 40)),
                          {"natural": "water", "water": "river"})
            self.map.line(coords, {"waterway": "river", "name": self.name("River")}, corridor=width / 2 + 5)
        for _ in range(max(1, round(side / 900))):
            # From a point on the edge, heading inwards.
            edge, along = int(rng.integers(4)), rng.uniform(0.1, 0.9) * side
            start = [(along, -20.0), (side + 20.0, along), (along, side + 20.0), (-20.0, along)][edge]
            heading = edge * math.pi / 2 + math.pi / 2 + rng.uniform(-0.6, 0.6)
            coords = _meander(rng, start, heading, rng.uniform(1500, 5000), step=30, wander=0.1, pull=0.05)
            self.map.line(coords, {"waterway": "stream", "name": self.name("Brook")}, corridor=4)

    # Districts.
    def districts(self, junction: list[list[np.ndarray]]) -> None:
        for i in range(len(junction) - 1):
            for j in range(len(junction[0]) - 1):
                quad = (junction[i][j], junction[i + 1][j], junction[i + 1][j + 1], junction[i][j + 1])
                self._superblock(quad)

    def _superblock(self, quad) -> None:
        rng = self.rng
        p00, p10, p11, p01 = quad

        def at(s: float, t: float) -> np.ndarray:
            return (1 - s) * (1 - t) * p00 + s * (1 - t) * p10 + s * t * p11 + (1 - s) * t * p01

        width = (np.linalg.norm(p10 - p00) + np.linalg.norm(p11 - p01)) / 2
        height = (np.linalg.norm(p01 - p00) + np.linalg.norm(p11 - p10)) / 2
        todo = [(0.0, 1.0, 0.0, 1.0)]
        parcels = []
        while todo:
            s0, s1, t0, t1 = todo.pop()
            w, h = (s1 - s0) * width, (t1 - t0) * height
            limit = rng.uniform(200, 400) + 250 * (1 - self.urbanity(*at((s0 + s1) / 2, (t0 + t1) / 2)))
            if max(w, h) <= limit:
                parcels.append((s0, s1, t0, t1))
                continue
            r = rng.uniform(0.38, 0.62)
            if w >= h:
                s = s0 + r * (s1 - s0)
                todo += [(s0, s, t0, t1), (s, s1, t0, t1)]
                ends = (at(s, t0), at(s, t1))
            else:
                t = t0 + r * (t1 - t0)
                todo += [(s0, s1, t0, t), (s0, s1, t, t1)]
                ends = (at(s0, t), at(s1, t))
            self._local_road(np.array(ends))
        for s0, s1, t0, t1 in parcels:
            corners = [at(s0, t0), at(s1, t0), at(s1, t1), at(s0, t1)]
            poly = Polygon(corners).buffer(-9, join_style="mitre").intersection(
                box(-30, -30, self.side + 30, self.side + 30))
            if poly.is_empty or poly.area < 2000:
                continue
            poly = max(_polygons(poly), key=lambda p: p.area)
            edge = corners[1] - corners[0]
            angle = math.atan2(edge[1], edge[0])
            c = poly.centroid
            kind = KINDS[rng.choice(len(KINDS), p=_weights(self.urbanity(c.x, c.y)))]
            getattr(self, f"_{kind}")(poly, angle)

    def _local_road(self, ends: np.ndarray) -> None:
        mid = ends.mean(axis=0)
        u = self.urbanity(*mid)
        roll = self.rng.random()
        if roll < 0.35 + 0.5 * u:
            kind = "tertiary" if u > 0.4 else "unclassified"
            self.map.line(ends, {"highway": kind, "name": self.name("Street")}, corridor=6)
        elif roll < 0.9:
            self.map.line(ends, {"highway": "track"}, corridor=3)

    # Helpers for parcels.
    def _frame(self, poly: Polygon, angle: float) -> tuple[float, float, float, float, float, float]:
        """The parcel in its own frame: centre (cx, cy), extents along and across ``angle``."""
        c = poly.centroid
        pts = np.asarray(poly.exterior.coords) - (c.x, c.y)
        ca, sa = math.cos(angle), math.sin(angle)
        along = pts @ np.array([ca, sa])
        across = pts @ np.array([-sa, ca])
        return c.x, c.y, along.min(), along.max(), across.min(), across.max()

    def _place(self, poly: Polygon, angle: float, a: float, b: float) -> tuple[float, float]:
        """The map point at (along a, across b) in the parcel's frame."""
        c = poly.centroid
        ca, sa = math.cos(angle), math.sin(angle)
        return c.x + a * ca - b * sa, c.y + a * sa + b * ca

    def _spot(self, poly: Polygon, angle: float, w: float, h: float, taken: list[BaseGeometry],
              tries: int = 12) -> Polygon | None:
        """A free ``w`` x ``h`` rectangle inside the parcel, clear of corridors and ``taken``."""
        _, _, a0, a1, b0, b1 = self._frame(poly, angle)
        inner = poly.buffer(-3)
        for _ in range(tries):
            a = self.rng.uniform(a0 + w / 2, max(a0 + w / 2 + 1, a1 - w / 2))
            b = self.rng.uniform(b0 + h / 2, max(b0 + h / 2 + 1, b1 - h / 2))
            cand = _rect(*self._place(poly, angle, a, b), w, h, angle)
            if inner.contains(cand) and self.map.free([cand])[0] and not any(cand.intersects(t) for t in taken):
                taken.append(cand)
                return cand
        return None

    def _buildings(self, shapes: list[Polygon], tags: dict[str, str], poly: Polygon,
                   taken: list[BaseGeometry]) -> int:
        """Add the shapes that lie inside the parcel and clear of corridors and ``taken``."""
        if not shapes:
            return 0
        arr = np.array(shapes, dtype=object)
        ok = shapely.contains(poly.buffer(-2), arr) & self.map.free(shapes)
        if taken:
            blocked = shapely.STRtree(np.array(taken, dtype=object))
            hit, _ = blocked.query(arr, predicate="intersects")
            ok[hit] = False
        for shape in arr[ok]:
            self.map.area(shape, tags)
        return int(ok.sum())

    def _pond(self, poly: Polygon, angle: float, taken: list[BaseGeometry], r: float | None = None) -> None:
        r = r or self.rng.uniform(16, 32)
        spot = self._spot(poly, angle, 2.4 * r, 2.4 * r, taken)
        if spot is not None:
            c = spot.centroid
            self.map.area(_blob(self.rng, c.x, c.y, r), {"natural": "water", "water": "pond"})

    def _grass_patch(self, spot: Polygon) -> None:
        tag = [{"leisure": "park"}, {"landuse": "grass"}, {"leisure": "playground"}][self.rng.integers(3)]
        self.map.area(spot, tag)

    # District kinds.
    def _houses(self, poly: Polygon, angle: float) -> None:
        rng = self.rng
        self.map.area(poly, {"landuse": "residential"})
        taken: list[BaseGeometry] = []
        if rng.random() < 0.5:
            spot = self._spot(poly, angle, rng.uniform(45, 80), rng.uniform(45, 75), taken)
            if spot is not None:
                self.map.area(spot, {"landuse": "construction"})
                if rng.random() < 0.5:
                    c = spot.centroid
                    self.map.area(_rect(c.x, c.y, 14, 20, angle), {"building": "construction", "building:levels": "1"})
        if rng.random() < 0.45:
            spot = self._spot(poly, angle, rng.uniform(40, 70), rng.uniform(40, 70), taken)
            if spot is not None:
                self._grass_patch(spot)
        if rng.random() < 0.3:
            self._pond(poly, angle, taken)
        if rng.random() < 0.3:  # a school or a shop with its car park
            spot_w = rng.uniform(60, 80)
            spot = self._spot(poly, angle, spot_w, rng.uniform(40, 55), taken)
            if spot is not None:
                # Both inside the spot: the building at one end, its car park at the other.
                x, y = self._place(spot, angle, -spot_w / 2 + 16, 0)
                self._buildings([_rect(x, y, 24, 36, angle)], {"building": str(rng.choice(["school", "retail"])),
                                                               "building:levels": "2"}, spot.buffer(2), [])
                x, y = self._place(spot, angle, spot_w / 2 - 14, 0)
                self._buildings([_rect(x, y, 20, 30, angle)], {"amenity": "parking", "parking": "surface"},
                                spot.buffer(2), [])
        cx, cy, a0, a1, b0, b1 = self._frame(poly, angle)
        spacing = rng.uniform(68, 86)
        houses, sheds = [], []
        b = b0 + rng.uniform(30, 45)
        while b < b1 - 20:
            street = np.array([self._place(poly, angle, a0 - 5, b), self._place(poly, angle, a1 + 5, b)])
            self.map.line(street, {"highway": "residential", "name": self.name("Lane")})
            for side in (-1, 1):
                depth = rng.uniform(14, 18)
                a = a0 + rng.uniform(8, 16)
                while a < a1 - 8:
                    w, h = rng.uniform(9, 14), rng.uniform(8, 12)
                    jitter = rng.uniform(-0.06, 0.06)
                    x, y = self._place(poly, angle, a, b + side * (depth + h / 2 - 4))
                    houses.append(_rect(x, y, w, h, angle + jitter))
                    if rng.random() < 0.35:
                        x, y = self._place(poly, angle, a + rng.uniform(-3, 3), b + side * (depth + h + 6))
                        sheds.append(_rect(x, y, 4.5, 5.5, angle + jitter))
                    a += w + rng.uniform(9, 16)
            b += spacing
        self._buildings(houses, {"building": "house", "building:levels": str(rng.integers(1, 3))}, poly, taken)
        self._buildings(sheds, {"building": "shed", "height": "3"}, poly, taken)

    def _apartments(self, poly: Polygon, angle: float) -> None:
        rng = self.rng
        self.map.area(poly, {"landuse": "residential"})
        taken: list[BaseGeometry] = []
        cx, cy, a0, a1, b0, b1 = self._frame(poly, angle)
        ring = poly.buffer(-22).exterior if poly.buffer(-22).geom_type == "Polygon" else None
        if ring is not None and ring.length > 100:
            pts = np.asarray(ring.coords)[:-1]
            self.map.line(pts, {"highway": "service"})  # open: a gap where the loop starts
        b = b0 + rng.uniform(35, 45)
        blocks, lots, greens = [], [], []
        row = 0
        while b < b1 - 30:
            a = a0 + rng.uniform(30, 40)
            while a < a1 - 30:
                length = rng.uniform(40, 70)
                x, y = self._place(poly, angle, a + length / 2, b)
                blocks.append(_rect(x, y, length, rng.uniform(12, 16), angle))
                x, y = self._place(poly, angle, a + length / 2, b + 21)
                if row % 2 == 0 or rng.random() < 0.35:
                    lots.append(_rect(x, y, min(length, 45), 18, angle))
                else:
                    greens.append(_rect(x, y, length, 20, angle))
                a += length + rng.uniform(18, 26)
            b += rng.uniform(46, 56)
            row += 1
        self._buildings(blocks, {"building": "apartments", "building:levels": str(rng.integers(3, 9))}, poly, taken)
        self._buildings(lots, {"amenity": "parking", "parking": "surface"}, poly, taken)
        self._buildings(greens, {"landuse": "grass"}, poly, taken)
        if rng.random() < 0.5:
            spot = self._spot(poly, angle, 30, 30, taken + blocks)
            if spot is not None:
                self.map.area(spot, {"leisure": "playground"})

    def _industrial(self, poly: Polygon, angle: float) -> None:
        rng = self.rng
        self.map.area(poly, {"landuse": "industrial"})
        taken: list[BaseGeometry] = []
        cx, cy, a0, a1, b0, b1 = self._frame(poly, angle)
        if rng.random() < 0.35:  # a siding along one edge
            b = b0 + 12 if rng.random() < 0.5 else b1 - 12
            self.map.line(np.array([self._place(poly, angle, a0 + 10, b), self._place(poly, angle, a1 - 10, b)]),
                          {"railway": "rail", "service": "siding"}, corridor=5)
        lot_a, lot_b = rng.uniform(90, 140), rng.uniform(80, 120)
        na, nb = max(1, round((a1 - a0) / lot_a)), max(1, round((b1 - b0) / lot_b))
        da, db = (a1 - a0) / na, (b1 - b0) / nb
        for k in range(1, na):
            line = np.array([self._place(poly, angle, a0 + k * da, b0), self._place(poly, angle, a0 + k * da, b1)])
            self.map.line(line, {"highway": "service"}, corridor=4)
        sheds, lots = [], []
        for ia in range(na):
            for ib in range(nb):
                ca, cb = a0 + (ia + 0.5) * da, b0 + (ib + 0.5) * db
                x, y = self._place(poly, angle, ca, cb)
                w, h = da - 14, db - 14
                if w < 20 or h < 20:
                    continue
                roll = rng.random()
                if roll < 0.6:
                    bw = w * rng.uniform(0.5, 0.75)
                    x1, y1 = self._place(poly, angle, ca - (w - bw) / 2, cb)
                    sheds.append(_rect(x1, y1, bw, h * rng.uniform(0.6, 0.9), angle))
                    x2, y2 = self._place(poly, angle, ca + bw / 2 + 2, cb)
                    lots.append(_rect(x2, y2, (w - bw) - 6, h * 0.8, angle))
                elif roll < 0.8:
                    lot = _rect(x, y, w, h, angle)
                    if self.map.free([lot])[0] and poly.contains(lot):
                        self.map.area(lot, {"landuse": str(rng.choice(["brownfield", "construction"]))})
                else:
                    x1, y1 = self._place(poly, angle, ca, cb - h / 4)
                    sheds.append(_rect(x1, y1, w * 0.5, h * 0.35, angle))
                    x2, y2 = self._place(poly, angle, ca, cb + h / 4)
                    lots.append(_rect(x2, y2, w * 0.8, h * 0.35, angle))
        self._buildings(sheds, {"building": str(rng.choice(["industrial", "warehouse"])),
                                "building:levels": str(rng.integers(2, 4))}, poly, taken)
        self._buildings(lots, {"amenity": "parking", "parking": "surface"}, poly, taken)

    def _commercial(self, poly: Polygon, angle: float) -> None:
        rng = self.rng
        self.map.area(poly, {"landuse": str(rng.choice(["retail", "commercial"]))})
        taken: list[BaseGeometry] = []
        cx, cy, a0, a1, b0, b1 = self._frame(poly, angle)
        depth = (b1 - b0)
        big = []
        a = a0 + 12
        while a < a1 - 50:
            w = min(rng.uniform(60, 120), a1 - 12 - a)
            x, y = self._place(poly, angle, a + w / 2, b1 - 12 - depth * 0.2)
            big.append(_rect(x, y, w, depth * 0.35, angle))
            a += w + rng.uniform(15, 30)
        self._buildings(big, {"building": str(rng.choice(["retail", "commercial"])), "building:levels": "2"}, poly,
                       taken)
        x, y = self._place(poly, angle, (a0 + a1) / 2, b0 + 12 + depth * 0.25)
        lot = _rect(x, y, (a1 - a0) - 30, depth * 0.42, angle)
        self._buildings([lot], {"amenity": "parking", "parking": "surface"}, poly, taken)
        line = np.array([self._place(poly, angle, a0 - 5, b0 + 8), self._place(poly, angle, a1 + 5, b0 + 8)])
        self.map.line(line, {"highway": "service"})

    def _park(self, poly: Polygon, angle: float) -> None:
        rng = self.rng
        self.map.area(poly, {"leisure": "park", "name": self.name("Park")})
        taken: list[BaseGeometry] = []
        if rng.random() < 0.55:
            self._pond(poly, angle, taken, rng.uniform(18, 40))
        if rng.random() < 0.5:
            spot = self._spot(poly, angle, 55, 95, taken)
            if spot is not None:
                self.map.area(spot, {"leisure": "pitch", "sport": "soccer"})
        for _ in range(rng.integers(0, 3)):
            spot = self._spot(poly, angle, 50, 50, taken)
            if spot is not None:
                c = spot.centroid
                self.map.area(_blob(rng, c.x, c.y, 24), {"natural": "wood"})
        if rng.random() < 0.45:
            spot = self._spot(poly, angle, 24, 36, taken)
            if spot is not None:
                self.map.area(spot, {"amenity": "parking", "parking": "surface"})
        minx, miny, maxx, maxy = poly.bounds
        for _ in range(rng.integers(1, 4)):
            p = [(rng.uniform(minx, maxx), miny - 5), (rng.uniform(minx, maxx), (miny + maxy) / 2 + rng.normal(0, 20)),
                 (rng.uniform(minx, maxx), maxy + 5)]
            if rng.random() < 0.5:
                p = [(y - miny + minx, x - minx + miny) for x, y in p]  # across the other way
            path = LineString(p).intersection(poly)
            if not path.is_empty and path.length > 20:
                for part in shapely.get_parts(path):
                    if isinstance(part, LineString):
                        self.map.line(np.asarray(part.coords), {"highway": "footway"})

    def _farmland(self, poly: Polygon, angle: float) -> None:
        rng = self.rng
        cx, cy, a0, a1, b0, b1 = self._frame(poly, angle)
        taken: list[BaseGeometry] = []
        if rng.random() < 0.35:
            spot = self._spot(poly, angle, rng.uniform(60, 90), rng.uniform(60, 80), taken, tries=20)
            if spot is not None:
                self.map.area(spot, {"landuse": "farmyard"})
                c = spot.centroid
                x, y = self._place(spot, angle, -12, -12)
                self._buildings([_rect(x, y, 12, 10, angle)], {"building": "farmhouse", "building:levels": "2"},
                                spot.buffer(2), [])
                x, y = self._place(spot, angle, 6, 14)
                self._buildings([_rect(x, y, 34, 14, angle)], {"building": "barn", "height": "8"}, spot.buffer(2), [])
        if rng.random() < 0.25:
            spot = self._spot(poly, angle, 80, 80, taken)
            if spot is not None:
                c = spot.centroid
                self.map.area(_blob(rng, c.x, c.y, 36), {"natural": str(rng.choice(["wood", "scrub"]))})
        if rng.random() < 0.2:
            self._pond(poly, angle, taken)
        # Fields: the parcel cut along or across its frame, ditches between them.
        n = int(rng.integers(1, 5))
        cuts = sorted(rng.uniform(0.2, 0.8, n - 1))
        across = rng.random() < 0.5
        lo, hi = (b0, b1) if across else (a0, a1)
        edges = [lo] + [lo + c * (hi - lo) for c in cuts] + [hi]
        blocked = shapely.union_all(np.array(taken, dtype=object)) if taken else None
        for k in range(len(edges) - 1):
            if across:
                cut = Polygon([self._place(poly, angle, a, b) for a, b in
                               ((a0 - 5, edges[k] + 2), (a1 + 5, edges[k] + 2), (a1 + 5, edges[k + 1] - 2),
                                (a0 - 5, edges[k + 1] - 2))])
            else:
                cut = Polygon([self._place(poly, angle, a, b) for a, b in
                               ((edges[k] + 2, b0 - 5), (edges[k + 1] - 2, b0 - 5), (edges[k + 1] - 2, b1 + 5),
                                (edges[k] + 2, b1 + 5))])
            fieldshape = poly.intersection(cut)
            if blocked is not None:
                fieldshape = fieldshape.difference(blocked.buffer(4))
            self.map.area(fieldshape, {"landuse": "farmland", "crop": str(rng.choice(["wheat", "barley", "grass"]))})
        for k in range(1, len(edges) - 1):
            if rng.random() < 0.85:
                if across:
                    ends = [self._place(poly, angle, a0, edges[k]), self._place(poly, angle, a1, edges[k])]
                else:
                    ends = [self._place(poly, angle, edges[k], b0), self._place(poly, angle, edges[k], b1)]
                self.map.line(np.array(ends), {"waterway": "ditch"})
        if rng.random() < 0.5:  # a ditch along the parcel edge
            ends = [self._place(poly, angle, a0 + 1, b0 + 1), self._place(poly, angle, a1 - 1, b0 + 1)]
            self.map.line(np.array(ends), {"waterway": "ditch"})

    def _forest(self, poly: Polygon, angle: float) -> None:
        rng = self.rng
        tags = {"landuse": "forest"} if rng.random() < 0.6 else {"natural": "wood"}
        taken: list[BaseGeometry] = []
        if rng.random() < 0.3:  # a clearing: the forest becomes a multipolygon with a hole
            spot = self._spot(poly, angle, rng.uniform(50, 80), rng.uniform(50, 80), taken)
            if spot is not None:
                c = spot.centroid
                clearing = _blob(rng, c.x, c.y, spot.length / 10)
                self.map.area(poly.difference(clearing), tags)
                self.map.area(clearing, {"landuse": "meadow"})
                tags = {}
        if tags:
            self.map.area(poly, tags)
        if rng.random() < 0.3:
            self._pond(poly, angle, taken)
        if rng.random() < 0.5:
            minx, miny, maxx, maxy = poly.bounds
            track = LineString([(minx - 5, rng.uniform(miny, maxy)), ((minx + maxx) / 2, rng.uniform(miny, maxy)),
                                (maxx + 5, rng.uniform(miny, maxy))]).intersection(poly)
            for part in shapely.get_parts(track):
                if isinstance(part, LineString) and part.length > 20:
                    self.map.line(np.asarray(part.coords), {"highway": "track"})

    def _meadow(self, poly: Polygon, angle: float) -> None:
        rng = self.rng
        self.map.area(poly, {"landuse": "meadow"} if rng.random() < 0.6 else {"natural": "grassland"})
        taken: list[BaseGeometry] = []
        for _ in range(rng.integers(0, 3)):
            spot = self._spot(poly, angle, 50, 50, taken)
            if spot is not None:
                c = spot.centroid
                self.map.area(_blob(rng, c.x, c.y, 22), {"natural": "scrub"})
        if rng.random() < 0.4:
            self._pond(poly, angle, taken)

    def _lake(self, poly: Polygon, angle: float) -> None:
        rng = self.rng
        self.map.area(poly, {"landuse": "forest"} if rng.random() < 0.5 else {"leisure": "park"})
        c = poly.centroid
        minx, miny, maxx, maxy = poly.bounds
        r = min(maxx - minx, maxy - miny) * rng.uniform(0.3, 0.4)
        lake = _blob(rng, c.x, c.y, r, rough=0.3, n=28).intersection(poly.buffer(-4))
        lake = max(_polygons(lake), key=lambda p: p.area) if _polygons(lake) else None
        if lake is None:
            return
        self.map.area(lake, {"natural": "water", "water": "lake", "name": self.name("Lake")})
        if rng.random() < 0.6:
            start = rng.uniform(0, 2 * math.pi)
            wedge = Polygon([(c.x, c.y)] + [(c.x + 3 * r * math.cos(start + k * 0.35),
                                             c.y + 3 * r * math.sin(start + k * 0.35)) for k in range(5)])
            beach = lake.buffer(14).difference(lake).intersection(wedge).intersection(poly)
            self.map.area(beach, {"natural": "beach"})

    def _quarry(self, poly: Polygon, angle: float) -> None:
        rng = self.rng
        kind = rng.choice(["quarry", "construction", "sand"])
        core = poly.buffer(-rng.uniform(5, 25))
        if core.is_empty:
            core = poly
        if kind == "sand":
            self.map.area(poly, {"landuse": "meadow"})
            self.map.area(core, {"natural": "sand"})
        else:
            self.map.area(core, {"landuse": str(kind)})
        taken: list[BaseGeometry] = []
        for _ in range(rng.integers(1, 3)):
            spot = self._spot(poly, angle, rng.uniform(15, 30), rng.uniform(12, 20), taken)
            if spot is not None:
                self.map.area(spot, {"building": "industrial", "building:levels": "2"})
        if rng.random() < 0.5:
            spot = self._spot(poly, angle, 25, 35, taken)
            if spot is not None:
                self.map.area(spot, {"amenity": "parking", "parking": "surface"})

    def _cemetery(self, poly: Polygon, angle: float) -> None:
        self.map.area(poly, {"landuse": "cemetery"})
        c = poly.centroid
        self.map.area(_rect(c.x, c.y, 14, 24, angle), {"building": "chapel", "height": "11"})
        minx, miny, maxx, maxy = poly.bounds
        self.map.line(np.array([((minx + maxx) / 2, miny - 5), ((minx + maxx) / 2, maxy + 5)]),
                      {"highway": "footway"})

    def build(self) -> _Map:
        junction = self.major_grid()
        self.railways()
        self.waters()
        self.map.freeze_corridors()
        self.districts(junction)
        return self.map


# --- writing the .osm.pbf -------------------------------------------------------------------
def _write_pbf(path: Path, world: _Map, origin: tuple[float, float], epsg: int) -> dict:
    import osmium
    from pyproj import Transformer

    to_wgs84 = Transformer.from_crs(epsg, 4326, always_xy=True)
    rings = [w.coords for w in world.ways]
    closed = [len(c) > 3 and np.allclose(c[0], c[-1]) for c in rings]
    # A closed ring repeats its first node; every other vertex is a node of its own.
    body = [c[:-1] if k else c for c, k in zip(rings, closed, strict=True)]
    sizes = np.array([len(b) for b in body])
    xy = np.concatenate(body) + origin
    lon, lat = to_wgs84.transform(xy[:, 0], xy[:, 1])
    lon, lat = np.round(lon, 7), np.round(lat, 7)
    header = osmium.io.Header()
    header.add_box(osmium.osm.Box(osmium.osm.Location(float(lon.min()), float(lat.min())),
                                  osmium.osm.Location(float(lon.max()), float(lat.max()))))
    header.set("generator", "imagesim synthetic extract")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    with osmium.SimpleWriter(str(path), header=header, overwrite=True) as writer:
        for i, (x, y) in enumerate(zip(lon.tolist(), lat.tolist(), strict=True), 1):
            writer.add_node(osmium.osm.mutable.Node(id=i, location=(x, y)))
        for w, way in enumerate(world.ways):
            ids = list(range(starts[w] + 1, starts[w + 1] + 1))
            if closed[w]:
                ids.append(ids[0])
            writer.add_way(osmium.osm.mutable.Way(id=w + 1, nodes=ids, tags=way.tags))
        for r, rel in enumerate(world.relations):
            members = [("w", m + 1, role) for m, role in rel.members]
            writer.add_relation(osmium.osm.mutable.Relation(id=r + 1, members=members, tags=rel.tags))
    return {"nodes": int(sizes.sum()), "ways": len(world.ways), "relations": len(world.relations),
            "bounds": (float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max()))}


def generate_extract(path: Path, km: float, seed: int = 3) -> dict:
    """Write a synthetic extract of about ``km`` x ``km`` to ``path``; returns its counts and bounds.

    ``bounds``: (west, south, east, north) in degrees of all its nodes; ``utm_bounds``: the area
    (whole 625 m blocks) in ``epsg``.
    """
    xmin, ymin, xmax, ymax = synthetic_bounds(km)
    world = _Landscape(xmax - xmin, seed).build()
    counts = _write_pbf(Path(path), world, (xmin, ymin), EPSG)
    counts.update({"epsg": EPSG, "utm_bounds": (xmin, ymin, xmax, ymax)})
    return counts

