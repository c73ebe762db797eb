"""The .vmx grammar and character sets as VMware reads and writes them (open-vm-tools dictll.c,
escape.c, unicodeSimpleTypes.c), without vmrun."""

from __future__ import annotations

from pathlib import Path

import pytest

import vmctl
from vmctl_vmware._vmx import VmxEncodingError, VmxFile, parse_line, python_codec

# One of each line form dictll.c knows, plus lines it calls "weird" (kept as they are).
MIXED = (
    b'.encoding = "UTF-8"\n'
    b"# a comment on its own line\n"
    b"\n"
    b"memsize = 1024   # MB, unquoted\n"
    b'\tdisplayName="tab and no spaces"#trailing\n'
    b"floppy0.fileName =\n"
    b'annotation = "say |22hi|22 ||41 |4|41 |7C"\n'
    b"this line is not a setting\n"
    b'unterminated = "no closing quote\n'
    b'MemSize = "2048"\n'
)


def test_each_line_form_is_read_as_dictll_reads_it() -> None:
    vmx = VmxFile.from_bytes(MIXED)
    assert vmx.get("memsize") == "2048", "keys are case-insensitive and the last one counts"
    assert vmx.get("displayname") == "tab and no spaces"
    assert vmx.get("floppy0.fileName") == "", "'name =' is an empty value"
    assert vmx.get("annotation") == 'say "hi" ||41 |4|41 |', "|XX is a byte; '|' then a non-hex digit is literal"
    assert vmx.get("unterminated") is None and vmx.get("this") is None
    assert vmx.keys() == [".encoding", "memsize", "displayName", "floppy0.fileName", "annotation", "MemSize"]
    assert parse_line(b"k = v w") is None, "text after an unquoted value must be a comment"
    assert parse_line(b"k = v#c") is not None


def test_reading_then_writing_changes_no_byte() -> None:
    for data in (MIXED, MIXED.replace(b"\n", b"\r\n"), b"\xef\xbb\xbf" + MIXED, MIXED.rstrip(b"\n")):
        assert VmxFile.from_bytes(data).to_bytes() == data


def test_a_key_is_replaced_in_place_once_keeping_comments_and_order() -> None:
    vmx = VmxFile.from_bytes(MIXED)
    vmx.set("MEMSIZE", "4096")
    vmx.set("displayName", "new")
    out = vmx.to_bytes()
    assert out.count(b"memsize") + out.count(b"MemSize") == 1, "one memsize line, never a second"
    assert b'memsize = "4096"   # MB, unquoted\n' in out, "written where it was, its comment kept"
    assert b"\tdisplayName" not in out and b'displayName = "new"#trailing\n' in out
    lines = out.split(b"\n")
    assert lines[:3] == [b'.encoding = "UTF-8"', b"# a comment on its own line", b""]
    assert b"this line is not a setting" in lines and b'unterminated = "no closing quote' in lines
    vmx.set("numvcpus", "2")
    assert vmx.to_bytes().endswith(b'unterminated = "no closing quote\nnumvcpus = "2"\n'), "new keys go last"
    assert VmxFile.from_bytes(vmx.to_bytes()).get("memsize") == "4096"


def test_written_values_are_escaped_as_dictll_marshals_them() -> None:
    vmx = VmxFile.parse('.encoding = "UTF-8"\n')
    vmx.set("annotation", 'a "q" | b\tc\nd # e')
    assert vmx.render().endswith('annotation = "a |22q|22 |7C b\tc|0Ad # e"\n')
    assert VmxFile.parse(vmx.render()).get("annotation") == 'a "q" | b\tc\nd # e'


def test_a_legacy_charset_is_read_and_written_in_that_charset() -> None:
    data = '.encoding = "windows-1252"\ndisplayName = "Café"\nmemsize = "256"\n'.encode("cp1252")
    vmx = VmxFile.from_bytes(data)
    assert vmx.get("displayName") == "Café"
    vmx.set("memsize", "512")
    vmx.set("annotation", "naïve")
    out = vmx.to_bytes()
    assert out == data.replace(b'"256"', b'"512"') + 'annotation = "naïve"\n'.encode("cp1252")
    assert b"\xef\xbf\xbd" not in out and b"\xc3" not in out, "no U+FFFD, no UTF-8 bytes"


def test_vmwares_own_charset_names_are_understood() -> None:
    assert python_codec("windows-949-2000") == "cp949"
    assert python_codec("windows-936-2000") == "cp936"
    assert python_codec("Shift_JIS") == "cp932"
    data = '.encoding = "Shift_JIS"\nannotation = "①テスト"\n'.encode("cp932")  # ① is in cp932 only
    assert VmxFile.from_bytes(data).get("annotation") == "①テスト"


def test_a_value_the_charset_cannot_hold_makes_the_file_utf8_keeping_its_characters() -> None:
    data = '.encoding = "windows-1252"\ndisplayName = "Café"\n'.encode("cp1252")
    vmx = VmxFile.from_bytes(data)
    vmx.set("annotation", "日本")
    out = vmx.to_bytes()
    assert out == '.encoding = "UTF-8"\ndisplayName = "Café"\nannotation = "日本"\n'.encode()
    assert VmxFile.from_bytes(out).get("displayName") == "Café"


def test_utf8_stays_utf8_and_undecodable_bytes_survive() -> None:
    data = b'.encoding = "UTF-8"\ndisplayName = "\xe5\x85\xb1\xe4\xba\xab"\nbroken = "\xff\xfe"\n'
    vmx = VmxFile.from_bytes(data)
    assert vmx.get("displayName") == "共享"
    vmx.set("memsize", "64")
    assert vmx.to_bytes() == data + b'memsize = "64"\n', "a byte that does not decode is kept, not U+FFFD"


def test_an_unknown_charset_is_a_typed_error_and_the_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "odd.vmx"
    data = b'.encoding = "x-no-such-charset"\nmemsize = "256"\n'
    path.write_bytes(data)
    with pytest.raises(VmxEncodingError) as err:
        VmxFile.load(path)
    assert isinstance(err.value, vmctl.BackendError) and err.value.code is vmctl.ErrorCode.UNSUPPORTED
    assert err.value.encoding == "x-no-such-charset" and str(path) in str(err.value)
    for not_text in ("base64", "utf-16"):
        with pytest.raises(VmxEncodingError):
            VmxFile.from_bytes(f'.encoding = "{not_text}"\n'.encode())
    assert path.read_bytes() == data
