"""XML the adapter reads (``init_data.xml``, ``vbox_job.xml``) without DTDs or entities.

Neither file has a use for a document type declaration, and with one a few hundred bytes of
entity definitions expand to gigabytes ("billion laughs"). A document that declares one is
refused before it is parsed:

>>> parse_xml("<a><b>1</b></a>").find("b").text
'1'
>>> parse_xml('<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>')
Traceback (most recent call last):
...
vmctl.boinc._xmlsafe.XmlRefused: a DTD (<!DOCTYPE ...>) or entity declaration is not accepted
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

__all__ = ["XmlRefused", "parse_xml"]


class XmlRefused(ValueError):
    """The document declares a DTD or entities, or is not well-formed XML."""


def parse_xml(text: str) -> ET.Element:
    """The root element of ``text``; :class:`XmlRefused` if it has a DTD or is not well-formed."""
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise XmlRefused("a DTD (<!DOCTYPE ...>) or entity declaration is not accepted")
    try:
        # No DTD, so no entity beyond XML's five: expat reads the text as it is.
        return ET.fromstring(text)  # noqa: S314
    except ET.ParseError as exc:
        raise XmlRefused(f"not well-formed XML: {exc}") from None
