"""`charrnn export`: check the outputs, read the checkpoint once, build each file, write them.

An existing file is never overwritten unless `force`; every file is written to a temporary file
and renamed into place, so a failed or interrupted export leaves nothing half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from charrnn.errors import CharrnnError
from charrnn.export.precision import check_precision

if TYPE_CHECKING:
    from charrnn.export.source import Source


def sentencepiece_path(onnx: Path) -> Path:
    """Where a subword model's SentencePiece model goes, beside its graph."""
    return onnx.with_name(onnx.stem + ".sentencepiece.model")


def _check_target(path: Path, force: bool) -> None:
    if path.is_dir():
        raise CharrnnError(f"{path} is a directory: give a file name")
    if not path.parent.is_dir():
        raise CharrnnError(f"cannot write {path}: the directory {path.parent} does not exist")
    if path.exists() and not force:
        raise CharrnnError(f"{path} exists: pass --force to overwrite it")


def _onnx_files(source: Source, onnx: Path) -> list[tuple[Path, bytes]]:
    from charrnn.export.description import describe
    from charrnn.export.onnx_graph import onnx_bytes

    side = None if source.tokenizer.kind in ("char", "byte") else sentencepiece_path(onnx)
    description = describe(source.config, source.tokenizer, lines=source.lines, sentencepiece=side and side.name)
    files = [(onnx, onnx_bytes(source.config, source.weights, description))]
    if side is not None:
        files.append((side, bytes(source.tokenizer.model)))  # type: ignore[attr-defined]
    return files


def _write(files: list[tuple[Path, bytes]], force: bool) -> None:
    from charrnn.files import atomic_write, write_together

    if not force:
        write_together(files)  # never over an existing file, even one made meanwhile
        return
    for path, data in files:
        atomic_write(path, lambda handle, data=data: handle.write(data))


def export(
    run: Path, *, onnx: Path | None = None, html: Path | None = None, precision: str = "float16", force: bool = False
) -> list[str]:
    """Export the model of `run` (a run directory or a checkpoint file) as an ONNX graph and/or an
    HTML page with its weights in `precision`; a line for each file written (the page's says what
    its precision costs)."""
    from charrnn.export.html_page import check_page_model, page_html
    from charrnn.export.source import read_source

    if onnx is None and html is None:
        raise CharrnnError("nothing to export: give --onnx FILE, --html FILE or both")
    check_precision(precision)
    targets = [Path(p) for p in (onnx, html) if p is not None]
    if onnx is not None and html is not None and Path(onnx).resolve() == Path(html).resolve():
        raise CharrnnError("--onnx and --html name the same file")
    for path in targets:
        _check_target(path, force)
    source = read_source(Path(run))
    if any(path.resolve() == source.path.resolve() for path in targets):
        raise CharrnnError(f"{source.path} is the checkpoint being exported: write the export elsewhere")
    if html is not None:
        check_page_model(source)
    files: list[tuple[Path, bytes]] = []
    if onnx is not None:
        files += _onnx_files(source, Path(onnx))
        for path, _ in files[1:]:
            _check_target(path, force)
    notes = {}
    if html is not None:
        page, notes[Path(html)] = page_html(source, precision)
        files.append((Path(html), page.encode("utf-8")))
    _write(files, force)
    return [f"wrote {path}" + (f" ({notes[path]})" if path in notes else "") for path, _ in files]
