"""The guest's screen through ``virDomainScreenshot``: a stream read bounded, PPM made PNG.

libvirt's QEMU driver answers in the format QEMU's ``screendump`` gave it: PNG
(``image/png``) with a QEMU that writes PNG and a libvirt that asks for it, else PPM
(``image/x-portable-pixmap``), converted here. A domain without a video device has no screen:
libvirt says "no screens to take screenshot from", which becomes :class:`Unsupported`.
"""

from __future__ import annotations

import libvirt

from vmctl.errors import BackendError, Unsupported
from vmctl.screenshot import MAX_SCREENSHOT_BYTES, as_png

__all__ = ["NO_VIDEO", "screenshot_of"]

NO_VIDEO = "the domain has no video device (add <video> to its XML)"
_CHUNK = 256 * 1024


def screenshot_of(dom: libvirt.virDomain, backend: str) -> bytes:
    """PNG bytes of ``dom``'s first screen. Raises libvirtError as libvirt does (the caller maps
    it), :class:`Unsupported` for a domain with no screen, BackendError for a picture too large
    or in an unknown format."""
    stream = dom.connect().newStream(0)
    try:
        try:
            mime = dom.screenshot(stream, 0, 0)
        except libvirt.libvirtError as exc:
            if "no screens" in (exc.get_error_message() or ""):
                raise Unsupported(backend, "screenshot", NO_VIDEO) from exc
            raise
        data = bytearray()
        while True:
            chunk = stream.recv(_CHUNK)
            if not isinstance(chunk, bytes) or not chunk:
                break
            data += chunk
            if len(data) > MAX_SCREENSHOT_BYTES:
                raise BackendError(f"the screenshot is larger than {MAX_SCREENSHOT_BYTES} bytes", command="screenshot")
        stream.finish()
    except BaseException:
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass  # finished or already broken: nothing left to abort
        raise
    if mime not in ("image/png", "image/x-portable-pixmap"):
        raise BackendError(f"libvirt returned a screenshot as {mime!r}", command="screenshot")
    return as_png(bytes(data))
