"""LIT's web client with its fonts served by the LIT server itself, for offline use.

LIT 1.3's `index.html` loads Material Icons and Roboto from Google's font
servers; offline, every icon shows as its name ("settings", "expand_more").
`localize` builds a copy of the client whose `index.html` links a local
`static/fonts/fonts.css` instead. The font files come from Debian packages that
`make install` installs (`FONT_PACKAGES`). The copy links LIT's files rather
than copying them, and is cached under the user cache directory
(`$XDG_CACHE_HOME/lit_sig`, by default `~/.cache/lit_sig`), keyed by its inputs.

LIT 1.3's Sequence Salience module draws one field name only, `grad_dot_input`,
with a signed colour map, and every other method unsigned (negative scores
clamp to white). With `signed_salience_fields`, the copy's `main.js` draws
those fields signed too (`rewrite_main_js`).
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile

import lit_nlp

LIT_CLIENT_ROOT = pathlib.Path(lit_nlp.__file__).parent / "client" / "build" / "default"
INDEX_FILE = pathlib.Path("static") / "index.html"
MAIN_JS = pathlib.Path("main.js")
LIT_SIGNED_FIELD = "grad_dot_input"  # The one field LIT 1.3's Sequence Salience draws signed.
# LIT 1.3.1's compiled `SequenceSalienceModule.cmap` test, and where `rewrite_main_js` puts its list.
_SIGNED_CMAP_TEST = f'"{LIT_SIGNED_FIELD}"===this.selectedSalienceMethod'
FONTS_DIR = pathlib.Path("static") / "fonts"
FONTS_CSS = "fonts.css"
FONT_PACKAGES = ("fonts-material-design-icons-iconfont", "fonts-roboto-fontface")
_ICONS = pathlib.Path("/usr/share/fonts/woff/material-design-icons-iconfont/MaterialIcons-Regular.woff2")
_ROBOTO = pathlib.Path("/usr/share/fonts/woff/roboto-fontface/roboto")
_GOOGLE_FONTS_LINK = re.compile(r"[ \t]*<link\b[^>]*\bhref=\"https://fonts\.googleapis\.com/[^\"]*\"[^>]*>\n?")


@dataclasses.dataclass(frozen=True)
class FontFace:
    """One `@font-face` rule: a CSS family name served from a local file."""

    family: str
    path: pathlib.Path
    weight: int = 400
    style: str = "normal"
    display: str = "swap"

    def css(self) -> str:
        return (
            f"@font-face {{\n  font-family: '{self.family}';\n  font-style: {self.style};\n"
            f"  font-weight: {self.weight};\n  font-display: {self.display};\n"
            f"  src: url('{self.path.name}') format('woff2');\n}}\n"
        )


def _roboto(family: str) -> list[FontFace]:
    return [
        FontFace(family, _ROBOTO / "Roboto-Regular.woff2"),
        FontFace(family, _ROBOTO / "Roboto-RegularItalic.woff2", style="italic"),
        FontFace(family, _ROBOTO / "Roboto-Medium.woff2", weight=500),
        FontFace(family, _ROBOTO / "Roboto-Bold.woff2", weight=700),
    ]


# The families LIT's components name. Debian ships only the filled icon set, so
# "Material Icons Outlined" shows filled icons; "Google Sans" is not free, so it
# is Roboto here. "Roboto Mono" and "Share Tech Mono" fall back to monospace.
FONT_FACES: tuple[FontFace, ...] = (
    FontFace("Material Icons", _ICONS, display="block"),
    FontFace("Material Icons Outlined", _ICONS, display="block"),
    *_roboto("Roboto"),
    *_roboto("Google Sans"),
)


def fonts_css(faces: tuple[FontFace, ...] = FONT_FACES) -> str:
    return "/* Local fonts for LIT's client, written by lit_sig.serving.offline_client. */\n" + "".join(
        face.css() for face in faces
    )


def rewrite_index(html: str, stylesheet: str = f"static/fonts/{FONTS_CSS}") -> str:
    """`index.html` with Google's font links replaced by a link to `stylesheet`.

    Raises:
        ValueError: `html` has no `</head>` to put the link before.
    """
    html = _GOOGLE_FONTS_LINK.sub("", html)
    if "</head>" not in html:
        raise ValueError("LIT's index.html has no </head>; expected LIT 1.3's client build.")
    return html.replace("</head>", f'  <link href="{stylesheet}" rel="stylesheet">\n</head>', 1)


def rewrite_main_js(js: str, signed_fields: tuple[str, ...]) -> str:
    """LIT's compiled client with the Sequence Salience module drawing `signed_fields` (and its own) signed.

    Raises:
        ValueError: `js` is not LIT 1.3's build (the module's colour-map test is not found exactly once).
    """
    if js.count(_SIGNED_CMAP_TEST) != 1:
        raise ValueError(
            "LIT's main.js has no single Sequence Salience colour-map test to patch; expected LIT 1.3's client build."
        )
    names = json.dumps(sorted({LIT_SIGNED_FIELD, *signed_fields}))
    return js.replace(_SIGNED_CMAP_TEST, f"{names}.includes(this.selectedSalienceMethod)")


def _cache_key(source: pathlib.Path, faces: tuple[FontFace, ...], signed_fields: tuple[str, ...]) -> str:
    digest = hashlib.sha256(str(source.resolve()).encode())
    digest.update((source / INDEX_FILE).read_bytes())
    digest.update(fonts_css(faces).encode())
    if signed_fields:
        main_js = (source / MAIN_JS).stat()
        digest.update(f"{json.dumps(sorted(signed_fields))}:{main_js.st_size}:{main_js.st_mtime_ns}".encode())
    for path in sorted({face.path for face in faces}):
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _mirror(source: pathlib.Path, target: pathlib.Path, skip: set[pathlib.Path]) -> None:
    """Recreates `source`'s folders under `target`, linking each file but those in `skip` (relative)."""
    for folder, _, files in os.walk(source):
        relative = pathlib.Path(folder).relative_to(source)
        (target / relative).mkdir(exist_ok=True)
        for name in files:
            if relative / name not in skip:
                (target / relative / name).symlink_to(pathlib.Path(folder) / name)


def _write_client(
    source: pathlib.Path, target: pathlib.Path, faces: tuple[FontFace, ...], signed_fields: tuple[str, ...]
) -> None:
    _mirror(source, target, {INDEX_FILE, MAIN_JS} if signed_fields else {INDEX_FILE})
    (target / INDEX_FILE).write_text(rewrite_index((source / INDEX_FILE).read_text(encoding="utf-8")), encoding="utf-8")
    if signed_fields:
        js = rewrite_main_js((source / MAIN_JS).read_text(encoding="utf-8"), signed_fields)
        (target / MAIN_JS).write_text(js, encoding="utf-8")
    fonts = target / FONTS_DIR
    fonts.mkdir(parents=True)
    for path in {face.path for face in faces}:
        shutil.copyfile(path, fonts / path.name)
    (fonts / FONTS_CSS).write_text(fonts_css(faces), encoding="utf-8")


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "lit_sig"


def localize(
    source: str | os.PathLike = LIT_CLIENT_ROOT,
    cache_dir: str | os.PathLike | None = None,
    faces: tuple[FontFace, ...] = FONT_FACES,
    signed_salience_fields: tuple[str, ...] = (),
) -> pathlib.Path:
    """The client root of a copy of `source` that loads `faces` from the LIT server.

    Built once per `source`, font set and signed fields under `cache_dir`
    (default: `default_cache_dir()`); where that can't be written, in a new
    temporary folder. `signed_salience_fields`: the Sequence Salience module
    draws these `TokenScores` fields with its signed colour map
    (`rewrite_main_js`); none leaves `main.js` as LIT ships it.

    Raises:
        FileNotFoundError: a font file is missing (install `FONT_PACKAGES`).
        ValueError: `signed_salience_fields` with a client that is not LIT 1.3's build.
    """
    source = pathlib.Path(source).resolve()  # Links to the files themselves, not through a venv's symlink.
    missing = sorted({str(face.path) for face in faces if not face.path.is_file()})
    if missing:
        raise FileNotFoundError(
            f"Fonts for the offline LIT client are missing ({', '.join(missing)}); run `make install`"
            f" or `apt-get install {' '.join(FONT_PACKAGES)}`."
        )
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = pathlib.Path(tempfile.mkdtemp(prefix="lit_sig_client_"))
    signed_fields = tuple(sorted(set(signed_salience_fields)))
    target = cache / f"client-{_cache_key(source, faces, signed_fields)}"
    if target.is_dir() and all(path.exists() for path in target.rglob("*")):
        return target
    if target.is_dir():  # Its links dangle: built through a path that has gone (another checkout's venv).
        stale = pathlib.Path(tempfile.mkdtemp(prefix=".stale-", dir=cache))
        with contextlib.suppress(OSError):
            target.rename(stale / target.name)
        shutil.rmtree(stale, ignore_errors=True)
    building = pathlib.Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    try:
        _write_client(source, building, faces, signed_fields)
        building.rename(target)
    except OSError:
        if not target.is_dir():  # Not a concurrent build that finished first.
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target
