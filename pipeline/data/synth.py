"""The embedded synthetic competition: procedurally drawn hotel rooms (a chain's shared colours, each hotel's own
textures and furniture), photographed from new viewpoints, written as a Hotel-ID-like folder with its truth file;
byte-identical for the same seed and hotel count (stages/make_data.py documents the folder)."""
import colorsys
import json
import numbers
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import UserError

VERSION = 1
MARKER = ".synth.json"
DEFAULT_HOTELS = 250
MAX_HOTELS = 20000
CANVAS_W, CANVAS_H = 320, 240
CAPTIONS = "captions.csv"  # image_id,caption: CAPTIONS_PER_IMAGE sentences about each photo (train and test)
CAPTIONS_PER_IMAGE = 5
HOTELS_PER_CHAIN = 25  # hotels sharing one palette; more per chain = weaker colour cue


# ---------------------------------------------------------------- colours and textures

def _hsv(h, s, v):
    # saturation <= 0.55 everywhere keeps room pixels clear of the pure-red occlusion colour
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(s, 0.55), min(v, 1.0)), np.float32) * 255


def _chain_palette(rng):
    u = rng.uniform
    h, wood = u(0, 1), u(0.05, 0.1)
    pal = {name: _hsv(u(0, 1) if hue is None else hue + u(-0.04, 0.04), u(*sr), u(*vr)) for name, hue, sr, vr in [
        ("wall", h, (0.05, 0.35), (0.6, 0.92)), ("wall2", h, (0.1, 0.45), (0.4, 0.7)),
        ("floor", wood if u() < 0.6 else None, (0.15, 0.55), (0.35, 0.7)), ("floor2", wood, (0.2, 0.55), (0.15, 0.4)),
        ("wood", wood, (0.3, 0.55), (0.2, 0.55)), ("bedding", None, (0, 0.12), (0.82, 0.97)),
        ("throw", None, (0.25, 0.55), (0.3, 0.7)), ("accent", None, (0.3, 0.55), (0.35, 0.8)),
        ("accent2", None, (0.3, 0.55), (0.35, 0.8)), ("curtain", None, (0.15, 0.5), (0.4, 0.85))]}
    pal["trim"] = _hsv(h, u(0, 0.1), u(0.85, 1.0)) if u() < 0.6 else _hsv(wood, 0.4, 0.3)
    return pal


def _lerp(a, b, t):
    return a + (b - a) * t[..., None]


def _wall(rng, pal, xx, yy, facts):
    kind = rng.choice(["stripes", "paper", "panels", "plain"])
    facts["wall"] = (str(kind), pal["wall"])
    ang = rng.uniform(0, np.pi) if kind == "paper" else rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.04)
    u, v = xx * np.cos(ang) + yy * np.sin(ang), -xx * np.sin(ang) + yy * np.cos(ang)
    period = rng.uniform(6, 26) if kind != "panels" else rng.uniform(35, 80)
    fu, fv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
    if kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
        if rng.random() < 0.5:
            t = (t > rng.uniform(0.3, 0.7)).astype(np.float32)
    elif kind == "paper":
        r = rng.uniform(0.15, 0.4)
        t = (np.abs(fu) + np.abs(fv) < r) if rng.random() < 0.5 else (fu * fu + fv * fv < r * r)
    elif kind == "panels":
        t = (np.abs(fu) > 0.44) | (np.abs(fv) > 0.44)
    else:
        t = cv2.resize(rng.random((6, 8)).astype(np.float32), xx.shape[::-1], interpolation=cv2.INTER_CUBIC)
    return _lerp(pal["wall"], pal["wall2"], np.asarray(t, np.float32) * rng.uniform(0.45, 1.0))


def _floor(rng, pal, W, H, y0, facts):
    Hp, Wp = 160, 320
    yy, xx = np.mgrid[0:Hp, 0:Wp].astype(np.float32)
    kind = rng.choice(["planks", "checker", "tiles", "carpet"])
    facts["floor"] = (str(kind), pal["floor"])
    if rng.random() < 0.5:
        xx, yy = yy, xx
    if kind == "planks":
        ph, L = rng.uniform(8, 20), rng.uniform(40, 120)
        row = (yy // ph).astype(np.int32)
        sh = xx + (rng.random(row.max() + 2) * L)[row]  # staggered plank ends
        col = (sh // L).astype(np.int32)
        tone = rng.random((row.max() + 2, col.max() + 2))[row, col]
        t = 0.6 * tone + 0.15 * np.sin(yy * rng.uniform(0.8, 1.6) + 3 * np.sin(xx / rng.uniform(8, 20)))
        t[((yy % ph) < 1.2) | ((sh % L) < 1.2)] = 1.2
    elif kind == "checker":
        s = rng.uniform(10, 30)
        if rng.random() < 0.5:
            xx, yy = (xx + yy) * 0.7071, (xx - yy) * 0.7071
        t = ((xx // s + yy // s) % 2) * rng.uniform(0.5, 1.0)
    elif kind == "tiles":
        s = rng.uniform(12, 40)
        n = int(max(Hp, Wp) / s) + 2
        t = 0.25 * rng.random((n, n))[(yy // s).astype(int), (xx // s).astype(int)]
        t[((xx % s) < 1.5) | ((yy % s) < 1.5)] = 1.0
    else:
        t = cv2.GaussianBlur(rng.random((Hp, Wp)).astype(np.float32), (0, 0), rng.uniform(0.8, 2.5))
        t = (t - t.min()) / (np.ptp(t) + 1e-6) * 0.6
        t += 0.4 * (np.sin(xx / rng.uniform(3, 10)) * np.sin(yy / rng.uniform(3, 10)) > 0.3)
    img = _lerp(pal["floor"], pal["floor2"], np.asarray(t, np.float32))
    k = rng.uniform(0.3, 0.9)
    src = np.float32([[0, 0], [Wp, 0], [Wp, Hp], [0, Hp]])
    dst = np.float32([[0, y0], [W, y0], [W * (1 + k), H], [-W * k, H]])
    return cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (W, H), borderMode=cv2.BORDER_REFLECT)


def _furnish(img, rng, pal, y0, facts):
    # One function of ~70 lines on purpose: every piece of furniture draws from `rng` in a fixed order, and that
    # order is what makes a seed's dataset byte-identical; pieces split into helpers invite reordering the draws.
    # facts["pieces"] records (name, colour, box) of each piece for the captions: recording draws nothing.
    H, W = img.shape[:2]
    pieces = facts.setdefault("pieces", [])

    def note(name, col, x1, y1, x2, y2):
        pieces.append((name, col, (x1, y1, x2, y2)))

    def R(a, b):
        return int(rng.integers(a, max(a, b) + 1))

    def c(name):
        return tuple(float(x) for x in np.clip(pal[name] + rng.normal(0, 4, 3), 0, 255))

    def box(x1, y1, x2, y2, col, t=-1):
        cv2.rectangle(img, (int(x1), int(y1)), (int(x2), int(y2)), col, t)

    sky = np.float32(rng.choice([[150, 190, 235], [200, 210, 220], [40, 50, 90], [120, 160, 130]]))
    for _ in range(int(rng.choice([0, 1, 1, 2]))):  # windows
        w, h = R(40, 90), R(40, 80)
        x, y = R(0, W - w), R(8, y0 - h - 12)
        box(x - 4, y - 4, x + w + 4, y + h + 4, c("trim"))
        note("window", None, x, y, x + w, y + h)
        img[y:y + h, x:x + w] = _lerp(sky, sky * 0.75, np.repeat(np.linspace(0, 1, h, dtype=np.float32)[:, None], w, 1))
        for i in range(1, R(2, 4)):
            box(x + i * w // 3, y, x + i * w // 3 + 1, y + h, c("trim"))
        box(x, y + h // 2, x + w, y + h // 2 + 1, c("trim"))
        if rng.random() < 0.6:  # curtains
            for cx in (x - 14, x + w - 6):
                box(cx, y - 8, cx + 20, y + h + 30, col := c("curtain"))
            note("curtains", col, x - 14, y - 8, x + w + 14, y + h + 30)
    for _ in range(R(0, 2)):  # pictures
        w, h = R(22, 60), R(18, 45)
        x, y = R(0, W - w), R(8, y0 - h - 20)
        box(x - 3, y - 3, x + w + 3, y + h + 3, c(rng.choice(["wood", "trim"])))
        note("picture", None, x, y, x + w, y + h)
        box(x, y, x + w, y + h, c(rng.choice(["bedding", "wall2"])))
        for _ in range(R(2, 4)):
            cv2.ellipse(img, (R(x, x + w), R(y, y + h)), (R(3, w // 2), R(3, h // 2)), R(0, 180), 0, 360,
                        c(rng.choice(["accent", "accent2", "throw"])), -1)
        box(x, y, x + w, y + h, c("wood"), 1)
    if rng.random() < 0.35:  # wardrobe
        w, top = R(50, 80), y0 - R(90, 130)
        x = R(0, W - w)
        box(x, top, x + w, y0 + 10, col := c("wood"))
        note("wardrobe", col, x, top, x + w, y0 + 10)
        box(x + w // 2, top + 4, x + w // 2 + 1, y0 + 6, c("floor2"))
        box(x + w // 2 - 6, (top + y0) // 2, x + w // 2 + 6, (top + y0) // 2 + 2, c("trim"))
    if rng.random() < 0.5:  # desk and TV
        w = R(50, 90)
        x = R(0, W - w)
        box(x + 8, y0 - 70, x + w - 8, y0 - 40, (25.0, 25.0, 30.0))
        note("desk", None, x, y0 - 70, x + w, y0 + 12)
        for x1, y1, x2, y2 in ((x, y0 - 18, x + w, y0 - 12), (x + 3, y0 - 12, x + 7, y0 + 12),
                               (x + w - 7, y0 - 12, x + w - 3, y0 + 12)):
            box(x1, y1, x2, y2, c("wood"))
    bw, hh, bh = R(100, 170), R(25, 55), R(40, 75)
    x1 = R(20, W - bw - 20)
    x2 = x1 + bw
    box(x1 - 6, y0 - hh - 10, x2 + 6, y0 + 8, col := c(rng.choice(["wood", "accent", "throw"])))  # headboard
    note("headboard", col, x1 - 6, y0 - hh - 10, x2 + 6, y0 + 8)
    grow = int(bw * rng.uniform(0.1, 0.25))
    base = np.int32([[x1, y0 - 8], [x2, y0 - 8], [x2 + grow, min(H, y0 + bh)], [x1 - grow, min(H, y0 + bh)]])
    cv2.fillPoly(img, [base], col := c("bedding"))
    note("bed", col, x1, y0 - 8, x2, min(H, y0 + bh))
    f = rng.uniform(0.3, 0.6)
    band = np.int32([[x1 - grow * f, y0 + bh * f], [x2 + grow * f, y0 + bh * f],
                     [x2 + grow, min(H, y0 + bh)], [x1 - grow, min(H, y0 + bh)]])
    cv2.fillPoly(img, [band], col := c("throw"))
    note("throw", col, x1, y0 + bh * f, x2, min(H, y0 + bh))
    n = 2 if bw > 125 else 1
    note("pillows" if n == 2 else "pillow", None, x1, y0 - 11, x2, y0 + 7)
    for i in range(n):  # pillows
        for col, t in ((c("bedding"), -1), (c("wall2"), 1)):
            cv2.ellipse(img, (x1 + (2 * i + 1) * bw // (2 * n), y0 - 2), (bw // (2 * n) - 8, 9), 0, 0, 360, col, t)
    for sx in (x1 - 34, x2 + 8):  # nightstands with lamps
        if rng.random() < 0.7:
            box(sx, y0 - 22, sx + 26, y0 + 14, c("wood"))
            box(sx + 12, y0 - 45, sx + 14, y0 - 22, c("trim"))
            shade = np.int32([[sx + 5, y0 - 45], [sx + 21, y0 - 45], [sx + 17, y0 - 62], [sx + 9, y0 - 62]])
            cv2.fillPoly(img, [shade], col := c(rng.choice(["bedding", "accent2"])))
            note("lamp", col, sx, y0 - 62, sx + 26, y0 + 14)
    if rng.random() < 0.4:  # armchair near the camera
        x, w = R(0, W - 60), R(40, 60)
        cy, ry = H - R(10, 40), R(18, 28)
        cv2.ellipse(img, (x + w // 2, cy), (w // 2, ry), 0, 0, 360, col := c("accent"), -1)
        note("armchair", col, x, cy - ry, x + w, cy + ry)


def _room(rng, pal, facts):
    """Render one hotel's room once; photos are views of it. facts gets what the captions describe."""
    W, H = CANVAS_W, CANVAS_H
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    y0 = int(rng.integers(125, 170))
    facts["horizon"] = y0
    img = np.ascontiguousarray(np.concatenate([_wall(rng, pal, xx, yy, facts)[:y0],
                                               _floor(rng, pal, W, H, y0, facts)[y0:]]))
    cv2.rectangle(img, (0, y0 - 5), (W, y0), tuple(float(x) for x in pal["trim"]), -1)
    _furnish(img, rng, pal, y0, facts)
    lx, ly = rng.uniform(0, W), rng.uniform(0, y0)
    light = rng.uniform(0.75, 0.9) + rng.uniform(0.1, 0.3) * np.exp(
        -((xx - lx) ** 2 + (yy - ly) ** 2) / (W * W * rng.uniform(0.05, 0.3)))
    img = img * light[..., None] + rng.normal(0, 3, img.shape).astype(np.float32)
    return cv2.GaussianBlur(np.clip(img, 0, 255), (0, 0), 0.6)


# ---------------------------------------------------------------- photos

def _photo(room, rng, long_side=0, view=None):
    """One view of the room, 128-192 px on the longer side; long_side > 0: enlarged to that longer side (full-size
    photos: the same views, more pixels) with sensor noise at that resolution. view gets the crop (room pixels) and
    whether the photo was turned, for the captions."""
    H, W = room.shape[:2]
    size = int(rng.integers(128, 193))
    aspect = float(rng.choice([4 / 3, 3 / 2, 1.0, 16 / 9]))
    if rng.random() < 0.25:
        aspect = 1 / aspect
    ow, oh = (size, round(size / aspect)) if aspect >= 1 else (round(size * aspect), size)
    cw = min(rng.uniform(0.45, 0.95) * W, 0.98 * H * aspect)  # zoom: the crop's share of the room's width
    ch = cw / aspect
    x0, y0 = rng.uniform(0, W - cw), rng.uniform(0, H - ch)
    if view is not None:
        view.update(crop=(x0, y0, x0 + cw, y0 + ch), zoom=cw / W, rotated=False)
    quad = np.float32([[x0, y0], [x0 + cw, y0], [x0 + cw, y0 + ch], [x0, y0 + ch]])
    a, centre = np.deg2rad(rng.normal(0, 4)), quad.mean(0)  # tilt, then corner jitter = mild perspective
    rot = np.float32([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    quad = (quad - centre) @ rot.T + centre + rng.normal(0, 0.05 * cw, (4, 2)).astype(np.float32)
    dst = np.float32([[0, 0], [ow, 0], [ow, oh], [0, oh]])
    img = cv2.warpPerspective(room, cv2.getPerspectiveTransform(np.float32(quad), dst), (ow, oh),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gain = rng.uniform(0.6, 1.3) * (1 + rng.uniform(-0.12, 0.12, 3))  # brightness and colour cast
    img = np.clip(img / 255 * gain.astype(np.float32), 0, 1) ** np.float32(rng.uniform(0.7, 1.4)) * 255
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.6))
    if rng.random() < 0.4:
        img = img + rng.normal(0, rng.uniform(2, 7), img.shape).astype(np.float32)
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if long_side:
        img = _enlarge(img, long_side, rng)
    if rng.random() < 0.1:
        img = np.ascontiguousarray(np.rot90(img, int(rng.integers(1, 4))))
        if view is not None:
            view["rotated"] = True
    return img


_NOISE = {}  # longer side -> a noise tile, made once per process: per-pixel random draws at 1024 px cost more than
# the rest of a photo


def _enlarge(img, long_side, rng):
    h, w = img.shape[:2]
    f = long_side / max(h, w)
    img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_LINEAR)
    if long_side not in _NOISE:
        _NOISE[long_side] = np.random.default_rng(long_side).normal(0, 3, (long_side + 64,) * 2 + (3,)).astype(np.int16)
    oy, ox = (int(v) for v in rng.integers(0, 64, 2))
    noise = _NOISE[long_side][oy:oy + img.shape[0], ox:ox + img.shape[1]]
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _red_rect(img, rng):
    """Paint one pure-red filled rectangle over 10-40% of the image (the test-time occlusion)."""
    H, W = img.shape[:2]
    area = rng.uniform(0.1, 0.4) * W * H
    w = int(np.clip(np.sqrt(area * rng.uniform(0.5, 2.0)), 8, W))
    h = int(np.clip(area / w, 8, H))
    x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
    img[y:y + h, x:x + w] = (255, 0, 0)
    return img


def _encode(img_rgb, ext, *params):
    return cv2.imencode(ext, np.ascontiguousarray(img_rgb[..., ::-1]), list(params))[1].tobytes()


def _jpg(img_rgb, rng):
    return _encode(img_rgb, ".jpg", cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 95)))


def _hex_ids(rng, n, seen):
    """n new 8-hex-digit names, none in `seen` (which is updated)."""
    out = []
    while len(out) < n:
        new = [f"{int(v):08x}" for v in rng.integers(0, 2 ** 32, size=n - len(out), dtype=np.uint64)]
        out += [h for h in dict.fromkeys(new) if h not in seen]
        seen.update(out)
    return out


# ---------------------------------------------------------------- captions

_HUES = [(0.04, "red"), (0.11, "orange"), (0.18, "yellow"), (0.45, "green"), (0.54, "teal"), (0.7, "blue"),
         (0.83, "purple"), (0.95, "pink"), (1.01, "red")]
_WALLS = {"stripes": "striped", "paper": "patterned", "panels": "panelled", "plain": "plain"}
_FLOORS = {"planks": "wooden", "checker": "checkered", "tiles": "tiled", "carpet": "carpeted"}
_COUNTS = {1: "a", 2: "two", 3: "three", 4: "four"}


def _colour_name(rgb):
    """The colour word a person would use for an RGB (0-255) room colour; palettes stay below saturation 0.55."""
    h, s, v = colorsys.rgb_to_hsv(*(np.asarray(rgb, np.float64) / 255))
    if v < 0.22:
        return "black"
    if s < 0.14:
        return "white" if v > 0.8 else "grey" if v > 0.45 else "dark grey"
    name = next(n for top, n in _HUES if h < top)
    if name in ("orange", "red", "yellow") and v < 0.55:
        return "brown"
    return "beige" if name in ("orange", "yellow") and s < 0.3 else name


def _phrase(name, colours, n):
    """What a caption says of n visible pieces called name (colours: the first one's, or None)."""
    col = _colour_name(colours[0]) if colours[0] is not None else ""
    count = _COUNTS.get(n, str(n))
    return {"window": f"{count} window{'s' * (n > 1)}", "curtains": f"{col} curtains",
            "picture": f"{count} framed picture{'s' * (n > 1)}", "wardrobe": f"a {col} wardrobe",
            "desk": "a desk with a tv", "headboard": f"a {col} headboard", "bed": f"a bed with {col} sheets",
            "throw": f"a {col} throw on the bed", "pillows": "two pillows", "pillow": "a pillow",
            "lamp": f"{count} lamp{'s' * (n > 1)} with {col} shades" if n > 1 else f"a lamp with a {col} shade",
            "armchair": f"a {col} armchair"}[name]


def _visible(facts, view):
    """The caption phrases of the pieces at least half inside the photo's crop, in drawing order."""
    x0, y0, x1, y1 = view["crop"]
    seen = {}
    for name, col, (a, b, c, d) in facts["pieces"]:
        inside = max(0.0, min(c, x1) - max(a, x0)) * max(0.0, min(d, y1) - max(b, y0))
        if inside >= 0.5 * max(1.0, (c - a) * (d - b)):
            seen.setdefault(name, []).append(col)
    return [_phrase(name, cols, len(cols)) for name, cols in seen.items()]


def _listed(parts):
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _captions(facts, view, seed):
    """CAPTIONS_PER_IMAGE sentences about one photo: its visible furniture with colours, the walls and floor it
    shows, its viewpoint; each a different subset and order, from its own stream (the photos' bytes are unchanged)."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = view["crop"]
    things = _visible(facts, view)
    kind, col = facts["wall"]
    wall = f"{_WALLS[kind]} {_colour_name(col)} walls"
    kind, col = facts["floor"]
    floor = f"a {_FLOORS[kind]} {_colour_name(col)} floor" if y1 > facts["horizon"] + 10 else ""
    shot = "a wide view" if view["zoom"] > 0.8 else "a close-up" if view["zoom"] < 0.6 else "a photo"
    side = ("the left" if (x0 + x1) / 2 < 0.4 * CANVAS_W else "the right" if (x0 + x1) / 2 > 0.6 * CANVAS_W
            else "the middle")
    turned = ", turned on its side" if view["rotated"] else ""
    out = []
    for n in range(CAPTIONS_PER_IMAGE):
        pick = list(rng.permutation(len(things))[:len(things) if n == 0 else int(rng.integers(1, 4))])
        parts = [things[i] for i in (sorted(pick) if n == 0 else pick)] or ["no furniture"]
        where = [wall] + ([floor] if floor else [])
        template = n if n < 5 else int(rng.integers(0, 5))
        text = [f"{shot} of {side} of a hotel room with {_listed(parts + where)}{turned}",
                f"a hotel room with {_listed(parts)}",
                f"{_listed(parts)} in front of {wall}",
                f"{shot} of a room: {_listed(parts)}" + (f" on {floor}" if floor else ""),
                f"{_listed(where)}; {_listed(parts)}"][template]
        out.append(text)
    return out


# ---------------------------------------------------------------- folder

def _check_out(out, shown):
    """Refuse to replace anything but an empty folder or a previous make-data output (it has our marker)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {shown}: is a file, not a folder; choose a new folder")
    try:
        ours = json.loads((out / MARKER).read_text()).get("generator") == "pipeline.synth"
    except (OSError, ValueError, AttributeError):
        ours = False
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise UserError(f"--out {shown}: folder is not empty and is not a make-data output (no {MARKER}); "
                        "choose a new folder or empty this one")


def _hotel_room(stream, palette):
    """(its generator, the room, its facts) of the hotel drawn from `stream`: the generator goes on to its photos."""
    hrng = np.random.default_rng(stream)
    pal = {k: np.clip(v + hrng.normal(0, 4, 3), 0, 255).astype(np.float32) for k, v in palette.items()}
    facts = {}
    return hrng, _room(hrng, pal, facts), facts


def _write_hotel(root, seed, i, hid, palette, photo_size, train_names, test_names):
    """One hotel's room and photos (train_images/<hid>/, its test images); returns its test images' truth rows."""
    hrng, room, facts = _hotel_room([seed, 1, i], palette)
    folder = root / "train_images" / str(hid)
    folder.mkdir()
    captions = []
    for j, name in enumerate(train_names):
        view = {}
        (folder / f"{name}.jpg").write_bytes(_jpg(_photo(room, hrng, photo_size, view), hrng))
        captions += [(f"{hid}/{name}.jpg", text) for text in _captions(facts, view, [seed, 4, i, j])]
    truth = []
    for j, name in enumerate(test_names):
        view = {}
        photo = _red_rect(_photo(room, hrng, photo_size, view), hrng)
        (root / "test_images" / f"{name}.jpg").write_bytes(_jpg(photo, hrng))
        truth.append((f"{name}.jpg", hid))
        captions += [(f"{name}.jpg", text) for text in _captions(facts, view, [seed, 5, i, j])]
    return truth, captions


def _hotels(rng, hotels):
    """(hotel ids, chain palettes, each hotel's chain): the first draws of a data set's stream, which the outside
    source (make_extra) replays to photograph the same rooms again."""
    hotel_ids = [int(h) + 1000 for h in rng.choice(999000, size=hotels, replace=False)]
    n_chains = max(3, round(hotels / HOTELS_PER_CHAIN))
    palettes = [_chain_palette(rng) for _ in range(n_chains)]
    return hotel_ids, palettes, rng.integers(0, n_chains, hotels)


def _photo_counts(rng, hotels, per_hotel=0.0):
    """Training photos per hotel, skewed (most hotels have few): mean ~8, or about per_hotel when given."""
    if per_hotel:
        return 2 + np.minimum(rng.geometric(1 / max(per_hotel - 1, 1.0), hotels) - 1, 98)
    return 2 + np.minimum(rng.geometric(1 / 7, hotels) - 1, 28)


def _generate(root, seed, hotels, masks, verbose, photo_size=0, train_per_hotel=0.0, test_per_hotel=0.0):
    rng = np.random.default_rng([seed, 0])
    hotel_ids, palettes, chain = _hotels(rng, hotels)
    n_train = _photo_counts(rng, hotels)
    r = rng.random(hotels)
    n_test = np.where(r < 0.08, 2, np.where(r < 0.78, 1, 0))
    counts = np.random.default_rng([seed, 3])  # other counts from their own stream: the default output is unchanged
    if train_per_hotel:
        n_train = _photo_counts(counts, hotels, train_per_hotel)
    if test_per_hotel:
        n_test = counts.poisson(test_per_hotel, hotels)
    seen = set()
    train_names = _hex_ids(rng, int(n_train.sum()), seen)
    test_names = _hex_ids(rng, int(n_test.sum()), seen)
    for sub in ("train_images", "test_images", "train_masks"):
        (root / sub).mkdir()
    from joblib import Parallel, delayed

    from pipeline.data.images import default_workers

    # each hotel draws from its own stream: hotels are written in parallel, the bytes are those of one process
    starts_train, starts_test = np.concatenate([[0], np.cumsum(n_train)]), np.concatenate([[0], np.cumsum(n_test)])
    jobs = (delayed(_write_hotel)(root, seed, i, hid, palettes[chain[i]], photo_size,
                                  train_names[starts_train[i]:starts_train[i + 1]],
                                  test_names[starts_test[i]:starts_test[i + 1]]) for i, hid in enumerate(hotel_ids))
    truth, captions, t0 = [], [], time.time()
    for i, (rows, texts) in enumerate(Parallel(n_jobs=default_workers(), return_as="generator", batch_size=4)(jobs)):
        truth += rows
        captions += texts
        if verbose and ((i + 1) * 4 // hotels > i * 4 // hotels or time.time() - t0 > 30):
            t0 = time.time()
            print(f"make-data: {(i + 1) * 100 // hotels}% ({i + 1}/{hotels} hotels, {starts_train[i + 1]} train "
                  "images)", flush=True)
    mrng = np.random.default_rng([seed, 2])
    for name in _hex_ids(mrng, masks, set()):
        w, h = int(mrng.integers(96, 257)), int(mrng.integers(96, 257))
        img = np.full((h, w, 3), 255 if mrng.random() < 0.5 else 0, np.uint8)
        (root / "train_masks" / f"{name}.png").write_bytes(_encode(_red_rect(img, mrng), ".png"))
    truth.sort()
    # placeholder guess, as in Kaggle's sample: the 5 hotels with the most train photos
    top5 = " ".join(str(hotel_ids[j]) for j in sorted(range(hotels), key=lambda j: (-n_train[j], hotel_ids[j]))[:5])
    (root / "sample_submission.csv").write_text(
        "image_id,hotel_id\n" + "".join(f"{n},{top5}\n" for n, _ in truth))
    (root / "test_truth.csv").write_text("image_id,hotel_id\n" + "".join(f"{n},{h}\n" for n, h in truth))
    import pandas as pd

    pd.DataFrame(captions, columns=["image_id", "caption"]).to_csv(root / CAPTIONS, index=False)
    meta = {"generator": "pipeline.synth", "version": VERSION, "seed": seed, "hotels": hotels, "masks": masks}
    meta.update({k: v for k, v in [("photo_size", photo_size), ("train_per_hotel", train_per_hotel),
                                    ("test_per_hotel", test_per_hotel)] if v})  # the default marker is unchanged
    (root / MARKER).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return len(train_names), len(truth)


def _check_args(seed, hotels, photo_size=0, train_per_hotel=0.0, test_per_hotel=0.0):
    if photo_size and not 64 <= photo_size <= 4096:
        raise UserError(f"--photo-size {photo_size}: must be between 64 and 4096 px (the longer side), or 0")
    if train_per_hotel and not 2 <= train_per_hotel <= 100 or test_per_hotel < 0:
        raise UserError(f"--train-per-hotel {train_per_hotel} / --test-per-hotel {test_per_hotel}: train must be "
                        "2-100 and test >= 0 (0 = the demo's counts)")
    if not isinstance(hotels, numbers.Integral) or not 5 <= hotels <= MAX_HOTELS:
        raise UserError(f"--hotels {hotels}: must be between 5 and {MAX_HOTELS} (default {DEFAULT_HOTELS})")
    if not isinstance(seed, numbers.Integral) or seed < 0:
        raise UserError(f"--seed {seed}: must be a non-negative integer, e.g. --seed 0")


def _swap_in(out, shown, write):
    """write(folder) fills a fresh folder beside `out`, which then replaces `out` in one step (a previous make-data
    output, or nothing); returns what write returned."""
    _check_out(out, shown)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        os.chmod(tmp, 0o755)
        result = write(tmp)
        _check_out(out, shown)  # it may have changed while we generated
        if out.exists():  # a directory cannot be swapped atomically: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "x")
        try:
            os.replace(tmp, out)
        except OSError:
            if old is not None:
                os.replace(old / "x", out)
            raise
    finally:
        for p in (tmp, old):
            if p is not None and p.exists():
                shutil.rmtree(p, ignore_errors=True)
    return result


def _megabytes(folder):
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def make_dataset(out: str | Path, seed: int = 0, hotels: int = DEFAULT_HOTELS, masks: int | None = None,
                 verbose: bool = False, photo_size: int = 0, train_per_hotel: float = 0.0,
                 test_per_hotel: float = 0.0) -> Path:
    """Write the synthetic competition folder at `out` (atomically) and return its Path. photo_size: the photos'
    longer side (0 = the demo's 128-192 px); train/test_per_hotel: mean photos per hotel (0 = the demo's ~8 / 0.86;
    Hotel-ID 2022: 44,703 / 3,116 = 14.3 train)."""
    _check_args(seed, hotels, photo_size, train_per_hotel, test_per_hotel)
    shown, seed, hotels = str(out), int(seed), int(hotels)
    masks = min(300, 10 * hotels) if masks is None else int(masks)
    out, t0 = Path(os.path.abspath(out)), time.time()
    n_train, n_test = _swap_in(out, shown, lambda tmp: _generate(tmp, seed, hotels, masks, verbose, photo_size,
                                                                 train_per_hotel, test_per_hotel))
    if verbose:
        print(f"make-data: wrote {shown}: {hotels} hotels, {n_train} train images, {n_test} test images, "
              f"{masks} masks, {_megabytes(out):.1f} MB, {time.time() - t0:.1f} s")
    return out


# ---------------------------------------------------------------- an outside source (make-data --extra)

LABEL_MAP = "label_map.csv"  # the outside source's map: extra_label (its hotel id), label (the competition's)


def _write_outside_hotel(root, room_stream, palette, view_stream, hid, names, photo_size):
    """An outside hotel's training photos, train_images/<hid>/: the room drawn from room_stream (a competition
    hotel's own stream: the same room photographed again), viewed from view_stream (None: the room's generator
    goes on)."""
    hrng, room, _ = _hotel_room(room_stream, palette)
    vrng = np.random.default_rng(view_stream) if view_stream else hrng
    folder = root / "train_images" / str(hid)
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"{name}.jpg").write_bytes(_jpg(_photo(room, vrng, photo_size), vrng))


def _generate_extra(root, seed, hotels, extra, photo_size=0, train_per_hotel=0.0):
    """`extra` new hotels and extra // 2 (at least 1) of the competition's hotels (seed, hotels) photographed again
    under other ids, all with 7-digit ids (the competition's have at most 6), and LABEL_MAP mapping the second
    kind onto the competition's ids. Every draw is from the streams [seed, 6..8]: the competition's bytes are those
    of make_dataset alone. Returns (hotels written, training photos)."""
    from joblib import Parallel, delayed

    from pipeline.data.images import default_workers

    ids, palettes, chain = _hotels(np.random.default_rng([seed, 0]), hotels)  # the competition's, replayed
    rng = np.random.default_rng([seed, 6])
    same = sorted(int(i) for i in rng.choice(hotels, size=min(hotels, max(1, extra // 2)), replace=False))
    n_chains = max(3, round(extra / HOTELS_PER_CHAIN))
    new_palettes = [_chain_palette(rng) for _ in range(n_chains)]
    new_chain = rng.integers(0, n_chains, extra)
    outside = [int(h) + 1_000_000 for h in rng.choice(999000, size=extra + len(same), replace=False)]
    counts = _photo_counts(rng, len(outside), train_per_hotel)
    names = _hex_ids(rng, int(counts.sum()), set())
    starts = np.concatenate([[0], np.cumsum(counts)])
    rooms = [([seed, 7, j], new_palettes[new_chain[j]], None) for j in range(extra)]
    rooms += [([seed, 1, i], palettes[chain[i]], [seed, 8, i]) for i in same]
    Parallel(n_jobs=default_workers(), batch_size=4)(
        delayed(_write_outside_hotel)(root, stream, pal, view, hid, names[starts[k]:starts[k + 1]], photo_size)
        for k, ((stream, pal, view), hid) in enumerate(zip(rooms, outside)))
    (root / LABEL_MAP).write_text("extra_label,label\n" + "".join(
        f"{hid},{ids[i]}\n" for hid, i in zip(outside[extra:], same)))
    meta = {"generator": "pipeline.synth", "version": VERSION, "kind": "extra", "seed": seed, "hotels": hotels,
            "extra": extra, "photo_size": photo_size, "train_per_hotel": train_per_hotel}
    (root / MARKER).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return len(outside), len(names)


def extra_folder(out: str | Path) -> Path:
    """Where make-data --extra writes the outside source of the competition folder `out`: <out>-extra beside it."""
    out = Path(out) if Path(out).name else Path(os.path.abspath(out))  # '.' has no name to add to
    return out.with_name(out.name + "-extra")


def check_extra(out: str | Path, extra: object) -> None:
    """A UserError unless `extra` outside hotels can be written at `out` (a new, empty or make-data folder)."""
    if not isinstance(extra, numbers.Integral) or not 1 <= extra <= MAX_HOTELS:
        raise UserError(f"--extra {extra}: must be between 1 and {MAX_HOTELS} outside hotels (0 = no outside source)")
    _check_out(Path(os.path.abspath(out)), str(out))


def make_extra(out: str | Path, seed: int = 0, hotels: int = DEFAULT_HOTELS, extra: int = 1, verbose: bool = False,
               photo_size: int = 0, train_per_hotel: float = 0.0) -> Path:
    """Write an outside source for the competition folder make_dataset writes with the same seed, hotels,
    photo_size and train_per_hotel (a Hotel-ID layout without test images, plus LABEL_MAP; see _generate_extra) at
    `out`, atomically; returns its Path."""
    _check_args(seed, hotels, photo_size, train_per_hotel)
    check_extra(out, extra)
    shown, t0 = str(out), time.time()
    out = Path(os.path.abspath(out))
    n_hotels, n_train = _swap_in(out, shown, lambda tmp: _generate_extra(tmp, int(seed), int(hotels), int(extra),
                                                                         photo_size, train_per_hotel))
    if verbose:
        print(f"make-data: wrote {shown}: {n_hotels} outside hotels ({n_hotels - extra} of them competition hotels "
              f"under other ids, mapped in {LABEL_MAP}), {n_train} train images, {_megabytes(out):.1f} MB, "
              f"{time.time() - t0:.1f} s")
    return out
