"""Make the README's explanation demo: one object on a plain background, through `vecsearch`.

    python scripts/explain_demo.py OUT_DIR

Draws a striped ball on two plain backgrounds (different places, different colours),
indexes them with ResNet50 (seeded random init: no download), and runs the CLI:
`vecsearch explain ball.png` (the top-1 ImageNet class of random weights: meaningless as
a class, but the map still shows where the features are) and `vecsearch explain ball.png
--like ball2.png` (why the two are similar). Writes docs/explain_demo.png from the two
overlays.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent


def ball(path: Path, size=(640, 480), centre=(220, 250), radius=110, background=(228, 226, 220)) -> Path:
    """A striped, shaded ball (one object) on a plain background."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = (xx - centre[0]) / radius, (yy - centre[1]) / radius
    inside = dx**2 + dy**2 <= 1.0
    stripes = np.floor((dx + dy) * 4) % 2 == 0
    shade = np.clip(1.15 - 0.55 * np.sqrt((dx + 0.35) ** 2 + (dy + 0.35) ** 2), 0.3, 1.0)
    colour = np.where(stripes[..., None], np.array([40, 90, 200.0]), np.array([240, 240, 240.0])) * shade[..., None]
    img = np.where(inside[..., None], colour, np.array(background, np.float64))
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    ImageDraw.Draw(out).ellipse(
        [centre[0] - 90, centre[1] + radius - 8, centre[0] + 90, centre[1] + radius + 12],
        fill=tuple(int(c * 0.8) for c in background),
    )  # its shadow
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


def main(out_dir: str) -> None:
    out = Path(out_dir)
    a = ball(out / "photos" / "ball.png", background=(40, 44, 52))
    b = ball(out / "photos" / "ball2.png", centre=(450, 200), radius=90, background=(70, 95, 140))
    vs = [str(Path(sys.executable).parent / "vecsearch")]  # the installed command
    index = ["--index", str(out / "index")]
    for cmd in (
        ["index", str(out / "photos"), "--weights", "none", "-q"],
        ["explain", str(a), "--out", str(out / "ball.class.png")],
        ["explain", str(a), "--like", str(b), "--out", str(out / "ball.like.png")],
        ["explain", str(b), "--like", str(a), "--out", str(out / "ball2.like.png")],
    ):
        print("$ vecsearch " + " ".join(c.replace(str(out) + "/", "") for c in cmd + index))
        r = subprocess.run(vs + cmd + index, capture_output=True, text=True, cwd=ROOT)
        sys.stdout.write(r.stdout.replace(str(out) + "/", ""))
        if r.returncode:
            sys.exit(r.stderr)
    panels = [Image.open(out / n) for n in ("ball.class.png", "ball.like.png", "ball2.like.png")]
    panels = [p.resize((320, round(p.height * 320 / p.width)), Image.Resampling.LANCZOS) for p in panels]
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 16, max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width + 8
    (ROOT / "docs").mkdir(exist_ok=True)
    sheet.save(ROOT / "docs" / "explain_demo.png", optimize=True)
    print(f"wrote {ROOT / 'docs' / 'explain_demo.png'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "explain-demo")
