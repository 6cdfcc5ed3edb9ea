"""PROGRAM from FAFLAVOR, as desispec names it (``desispec.io.meta.faflavor2program``).

Real tiles-daily files hold lines written before PROGRAM was filled (desispec#2251,
datamodel.md §1.7: about a quarter of them); DESI's tools patch those with
``faflavor2program(FAFLAVOR)``, and so does :func:`specprod_db.extract.tile.read_tiles_file`.
The mapping (datamodel.md §2.4): ``dark`` for a few SV1/CMX flavors, the listed
``specialtertiaryN``/``specialm31``/``specialodin`` flavors and any flavor ending in
``dark``; ``bright`` for ``sv1bgsmws``, flavors ending in ``bright`` (but
``sv1unwisebluebright``) and other listed ``specialtertiaryN``; ``backup`` for
``sv1backup1`` and flavors ending in ``backup``; ``dark1b``/``bright1b`` for flavors
ending in those; otherwise ``other``.  Later rules win, as in desispec.
"""
from typing import Union

import numpy as np

_DARK = frozenset(("cmxelg", "cmxlrgqso", "sv1elg", "sv1elgqso", "sv1lrgqso", "sv1lrgqso2")) \
    | frozenset("special" + s for s in (
        "m31 odin tertiary1 tertiary2 tertiary4 tertiary5 tertiary7 tertiary9 tertiary11 "
        "tertiary14 tertiary15 tertiary16 tertiary17 tertiary18 tertiary21 tertiary23 "
        "tertiary25 tertiary26 tertiary27 tertiary31 tertiary35 tertiary37 tertiary38 "
        "tertiary40 tertiary41").split())
_BRIGHT = frozenset(("sv1bgsmws",)) | frozenset("special" + s for s in (
    "tertiary3 tertiary6 tertiary8 tertiary10 tertiary12 tertiary13 tertiary19 tertiary20 "
    "tertiary22 tertiary24 tertiary28 tertiary29 tertiary30 tertiary32 tertiary33 "
    "tertiary34 tertiary36 tertiary39").split())


def program_of(faflavor: str) -> str:
    """The PROGRAM desispec gives a tile of fiberassign flavor ``faflavor``."""
    f = str(faflavor)
    program = "other"
    if f in _DARK or f.endswith("dark"):
        program = "dark"
    if f in _BRIGHT or (f != "sv1unwisebluebright" and f.endswith("bright")):
        program = "bright"
    if f == "sv1backup1" or f.endswith("backup"):
        program = "backup"
    if f.endswith("dark1b"):
        program = "dark1b"
    if f.endswith("bright1b"):
        program = "bright1b"
    return program


def faflavor2program(faflavor: Union[str, np.ndarray]) -> Union[str, np.ndarray]:
    """:func:`program_of` of a string, or of each element of an array (``U8``)."""
    if np.isscalar(faflavor):
        value = faflavor.decode() if isinstance(faflavor, bytes) else faflavor
        return program_of(value)
    values = np.atleast_1d(faflavor).astype(str)
    return np.array([program_of(v) for v in values.tolist()], dtype="U8")
