"""What a model sees in a text: `charrnn viz` and its explain page (see docs/visualization.md).

expl = explain_run(Path("runs/demo"), "held.txt")   # one stateful pass, ranked units
write_page(expl, Path("explain.html"))             # one self-contained HTML file
"""

from charrnn.viz.explain import (
    Explanation,
    WholeText,
    check_output,
    default_page,
    json_document,
    page_html,
    records,
    write_page,
)
from charrnn.viz.run import explain_run, explain_text

__all__ = [
    "Explanation",
    "WholeText",
    "check_output",
    "default_page",
    "explain_run",
    "explain_text",
    "json_document",
    "page_html",
    "records",
    "write_page",
]
