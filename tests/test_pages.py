"""The reader page and editor console HTML, rendered without a server."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from livepush.pages import paragraphs, render_editor, render_entry, render_reader


def entry(seq: int, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": f"e{seq}",
        "seq": seq,
        "body": f"body {seq}",
        "published_at": "2025-03-01T14:05:09.123Z",
        "updated_at": "2025-03-01T14:05:09.123Z",
    }
    return base | fields


def snapshot(*entries: dict[str, object], head_seq: int = 9) -> dict[str, object]:
    return {"feed": "demo", "epoch": "ep1", "head_seq": head_seq, "entries": list(entries)}


class Tags(HTMLParser):
    """Every start tag with its attributes, to check structure without regexes on HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


def article_ids(html: str) -> list[str | None]:
    return [attrs.get("data-id") for tag, attrs in tags(html) if tag == "article"]


def test_entry_text_is_escaped_never_markup() -> None:
    hostile = entry(
        1,
        title="<script>window.__xss=1</script>",
        body='<img src=x onerror="window.__xss=2">',
        author='"><b>me</b>',
    )
    html = render_reader("demo", snapshot(hostile), asset_version="1")
    assert "<script>window.__xss" not in html
    assert "<img" not in html
    assert "<b>me" not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;window.__xss=2&quot;&gt;" in html
    # The only scripts are ours: the module that starts the client.
    assert [tag for tag, _ in tags(html) if tag in {"script", "img"}] == ["script"]


def test_attribute_values_cannot_break_out() -> None:
    html = render_entry(entry(1, id='x" onclick="alert(1)'))
    article = next(attrs for tag, attrs in tags(html) if tag == "article")
    assert article["data-id"] == 'x" onclick="alert(1)'
    assert "onclick" not in article


def test_pinned_entries_come_first_then_newest_first() -> None:
    html = render_reader(
        "demo",
        snapshot(entry(5), entry(7), entry(2, pinned=True), entry(6), entry(3, pinned=True)),
        asset_version="1",
    )
    assert article_ids(html) == ["e3", "e2", "e7", "e6", "e5"]


def test_pinned_entry_is_marked() -> None:
    html = render_entry(entry(4, pinned=True))
    assert 'class="lp-entry is-pinned"' in html
    assert '<span class="lp-pin">Pinned</span>' in html
    assert "Pinned" not in render_entry(entry(4))


def test_time_is_rendered_as_hh_mm_with_its_timestamp() -> None:
    html = render_entry(entry(1))
    assert '<time class="lp-time" datetime="2025-03-01T14:05:09.123Z">14:05 UTC</time>' in html


def test_corrected_entry_shows_when_it_was_updated() -> None:
    html = render_entry(entry(1, updated_at="2025-03-01T15:30:00.000Z"))
    assert 'Updated <time datetime="2025-03-01T15:30:00.000Z">15:30 UTC</time>' in html
    assert "Updated" not in render_entry(entry(1))


def test_body_paragraphs_split_on_blank_lines() -> None:
    assert paragraphs("one\n\ntwo\r\n\r\nthree\nstill three\n") == [
        "one",
        "two",
        "three\nstill three",
    ]
    assert paragraphs("  \n ") == []
    html = render_entry(entry(1, body="a & b\n\nc"))
    assert '<div class="lp-body"><p>a &amp; b</p><p>c</p></div>' in html


def test_title_and_author_are_optional() -> None:
    html = render_entry(entry(1))
    assert "lp-title" not in html
    assert "lp-author" not in html
    html = render_entry(entry(1, title="CONVICTION", author="Desk"))
    assert '<h2 class="lp-title">CONVICTION</h2>' in html
    assert '<span class="lp-author">Desk</span>' in html


def main_attributes(html: str) -> dict[str, str | None]:
    return next(attrs for tag, attrs in tags(html) if tag == "main")


def test_reader_hands_its_position_to_the_client() -> None:
    html = render_reader("demo", snapshot(entry(3), head_seq=12), asset_version="1")
    main = main_attributes(html)
    assert main["data-feed"] == "demo"
    assert main["data-epoch"] == "ep1"
    assert main["data-head-seq"] == "12"


def test_load_older_starts_from_the_oldest_unpinned_entry() -> None:
    full = snapshot(entry(1, pinned=True), entry(8), entry(9))
    html = render_reader("demo", full, asset_version="1", limit=3)
    assert main_attributes(html)["data-before"] == "8"


def test_snapshot_shorter_than_its_limit_has_nothing_older() -> None:
    html = render_reader("demo", snapshot(entry(8), entry(9)), asset_version="1", limit=3)
    assert main_attributes(html)["data-before"] == "0"


def test_reader_imports_the_client_at_the_asset_version() -> None:
    html = render_reader("demo", snapshot(), asset_version="abc 1")
    assert 'import { subscribe } from "/v1/livepush.js?v=abc%201";' in html
    assert 'import { startReader } from "/static/reader.js?v=abc%201";' in html
    assert '<link rel="stylesheet" href="/static/reader.css?v=abc%201">' in html


def test_asset_version_cannot_break_out_of_the_script() -> None:
    html = render_reader("demo", snapshot(), asset_version='1";alert(1)//</script>')
    assert "alert(1)//</script>" not in html
    assert html.count("</script>") == 1


def test_empty_feed_says_so() -> None:
    html = render_reader("demo", snapshot(head_seq=0), asset_version="1")
    assert article_ids(html) == []
    assert re.search(r'<p class="lp-empty">No entries yet', html)


def test_feed_name_is_escaped() -> None:
    html = render_reader("<x>", snapshot(), asset_version="1")
    assert "<x>" not in html
    assert "<title>Live: &lt;x&gt;</title>" in html


def test_malformed_snapshot_entries_are_skipped() -> None:
    broken: dict[str, object] = {"feed": "demo", "entries": ["nope", 3, entry(2)]}
    assert article_ids(render_reader("demo", broken, asset_version="1")) == ["e2"]


def test_editor_pins_its_assets_to_the_version() -> None:
    html = render_editor(asset_version="v9")
    assert "__ASSET_VERSION__" not in html
    assert 'import { subscribe } from "/v1/livepush.js?v=v9";' in html
    assert 'import { startEditor } from "/static/editor.js?v=v9";' in html
    assert '<link rel="stylesheet" href="/static/editor.css?v=v9">' in html
