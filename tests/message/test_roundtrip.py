"""Property tests: from_mime(to_mime(m)) gives m's fields back, in every charset mode."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postillon.message import Address, Attachment, CharsetMode, Email, from_mime, to_mime

from .helpers import assert_wire_clean, parse

# text without controls or surrogates (header rules), with the odd space
_chars = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85")
header_text = st.text(_chars, max_size=120)
name_text = st.text(_chars, max_size=60).map(str.strip)
body_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=400
)
local = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s
)
domain = st.sampled_from(["example.com", "bücher.example", "EXAMPLE.org", "xn--bcher-kva.de"])
address = st.builds(lambda n, lp, d: Address(n, f"{lp}@{d}"), name_text, local, domain)
file_name = st.text(_chars, min_size=1, max_size=80).filter(lambda s: s.strip(" ./\\"))
attachment = st.builds(
    lambda content, name, cid: Attachment(content, name=name, cid=cid),
    st.binary(max_size=3000),
    file_name,
    st.one_of(st.none(), st.from_regex(r"[a-z0-9]{1,10}@x", fullmatch=True)),
)
modes = st.sampled_from(list(CharsetMode))


def _domain_key(a: Address) -> tuple[str, str, str]:
    return (a.name, a.local_part, a.ascii_domain.lower())


@settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    from_=address,
    to=st.lists(address, min_size=1, max_size=4),
    cc=st.lists(address, max_size=2),
    subject=header_text,
    text=st.one_of(st.none(), body_text),
    html=st.one_of(st.none(), body_text),
    attachments=st.lists(attachment, max_size=3),
    header_mode=modes,
    body_mode=modes,
    extra=st.lists(header_text.map(str.strip), max_size=2),
)
def test_round_trip(
    from_: Address,
    to: list[Address],
    cc: list[Address],
    subject: str,
    text: str | None,
    html: str | None,
    attachments: list[Attachment],
    header_mode: CharsetMode,
    body_mode: CharsetMode,
    extra: list[str],
) -> None:
    m = Email(
        from_=from_,
        to=to,
        cc=cc,
        subject=subject,
        text_body=text,
        html_body=html,
        attachments=attachments,
        headers=[(f"X-Extra-{k}", v) for k, v in enumerate(extra)],
        keywords=["alpha", "béta"],
        priority="low",
        in_reply_to="<a@b>",
    )
    data = to_mime(m, header_charset=header_mode, body_charset=body_mode)
    assert_wire_clean(data)
    parse(data)  # no defects in any part, per the stdlib's strict parser
    back = from_mime(data)

    assert [_domain_key(a) for a in back.from_] == [_domain_key(from_)]
    assert [_domain_key(a) for a in back.to] == [_domain_key(a) for a in to]
    assert [_domain_key(a) for a in back.cc] == [_domain_key(a) for a in cc]
    assert back.subject == subject
    assert back.headers == tuple((f"X-Extra-{k}", v) for k, v in enumerate(extra))
    assert back.keywords == ("alpha", "béta")
    assert back.in_reply_to == ("<a@b>",)
    assert back.priority is not None and back.priority.value == "low"
    assert back.message_id is not None

    single = not attachments and (text is None or html is None)
    if text is not None:
        want = text
        got = back.text_body or ""
        if single and want and not want.endswith("\n"):
            got = got[:-1] if got.endswith("\n") else got  # the message ends with CRLF
        assert got == want
    if html is not None:
        got_html = back.html_body or ""
        if single and html and not html.endswith("\n"):
            got_html = got_html[:-1] if got_html.endswith("\n") else got_html
        assert got_html == html
    if text is None and html is None and not attachments:
        assert back.text_body == ""

    # inline parts (with a cid) move into multipart/related with the HTML: compare as sets
    def key(a: Attachment) -> tuple[str, str, str, bytes]:
        return (a.name, a.type, a.cid or "", a.get_content())

    assert sorted(map(key, back.attachments)) == sorted(map(key, attachments))
    # a second pass writes the same structure again
    again = to_mime(back, header_charset=header_mode, body_charset=body_mode)
    parse(again)
    assert from_mime(again).subject == subject
