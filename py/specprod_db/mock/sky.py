"""The mock sky: Legacy Surveys bricks and the objects in them.

Every object is generated brick by brick from ``(seed, BRICKID)``, so any two tiles that
overlap see the same objects (shared targets) and a brick is identical whenever it is
regenerated (day after day). Kinds of object:

``LS``
    Legacy Surveys source that is a DESI target (dark and/or bright);
``LSX``
    Legacy Surveys source that is not a target (only in tractor files);
``SCND``
    secondary target (RELEASE < 1000 in TARGETID); ``match_lsid`` != 0 when it sits
    within 0.3" of an ``LSX`` source (photometry found by position only), else it has
    no LS counterpart (photometry from targeting);
``TOO``
    target of opportunity (RELEASE 9999), same two sub-cases;
``SKY``
    blank-sky target (TARGETID SKY bit 59);
``GAIA``
    Gaia-only backup target (RELEASE 0, GAIADR 2), no LS counterpart.

TARGETIDs follow desitarget's bit layout (datamodel.md §6.1).
"""
import numpy as np

from specprod_db.extract import brickgrid

KINDS = ("LS", "LSX", "SCND", "TOO", "SKY", "GAIA")
LS, LSX, SCND, TOO, SKY, GAIA = range(6)
NORTH_DEC = 32.375          # desitarget_resolve_dec()
BRICKSIZE = brickgrid.BRICKSIZE

# brick grid (desiutil.brick conventions, datamodel.md §5.2)
_DEC_C = brickgrid.ROW_DEC
_NCOL = brickgrid.NCOL
_FIRST = brickgrid.FIRST_ID


def encode_targetid(objid=0, brickid=0, release=0, mock=0, sky=0, gaiadr=0):
    """desitarget TARGETID bit layout (columnar)."""
    return (np.asarray(objid, np.int64) | (np.asarray(brickid, np.int64) << 22) |
            (np.asarray(release, np.int64) << 42) | (np.asarray(mock, np.int64) << 58) |
            (np.asarray(sky, np.int64) << 59) | (np.asarray(gaiadr, np.int64) << 60))


def ls_id(release, brickid, objid):
    return ((np.asarray(release, np.int64) << 40) | (np.asarray(brickid, np.int64) << 16) |
            np.asarray(objid, np.int64))


def bricks_in_disk(ra0, dec0, radius):
    """Bricks that may overlap a disk: dict of arrays brickid, name, ra1, ra2, dec1, dec2."""
    i0 = int(np.floor((dec0 - radius + 90 + 0.125) / BRICKSIZE))
    i1 = int(np.floor((dec0 + radius + 90 + 0.125) / BRICKSIZE))
    ids, r1, r2, d1, d2 = [], [], [], [], []
    for i in range(max(i0, 1), min(i1, 719) + 1):
        dc = _DEC_C[i]
        cosd = np.cos(np.radians(min(abs(dc) + 0.125, 89.0)))
        half = radius / cosd + 360.0 / _NCOL[i]
        j = np.arange(int(np.floor((ra0 - half) / 360 * _NCOL[i])),
                      int(np.floor((ra0 + half) / 360 * _NCOL[i])) + 1) % _NCOL[i]
        ids.append(_FIRST[i] + j)
        r1.append(j * 360.0 / _NCOL[i])
        r2.append((j + 1) * 360.0 / _NCOL[i])
        d1.append(np.full(len(j), dc - 0.125))
        d2.append(np.full(len(j), dc + 0.125))
    out = dict(brickid=np.concatenate(ids), ra1=np.concatenate(r1), ra2=np.concatenate(r2),
               dec1=np.concatenate(d1), dec2=np.concatenate(d2))
    # keep bricks whose nearest point is within the disk
    rac = np.clip(ra0, out["ra1"], out["ra2"])
    decc = np.clip(dec0, out["dec1"], out["dec2"])
    keep = angdist(ra0, dec0, rac, decc) < radius
    out = {k: v[keep] for k, v in out.items()}
    out["name"] = brickgrid.brickname((out["ra1"] + out["ra2"]) / 2,
                                      (out["dec1"] + out["dec2"]) / 2).astype("U8")
    return out


def angdist(ra1, dec1, ra2, dec2):
    """Angular distance in degrees."""
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    s = (np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2)
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(s, 0, 1))))


def brick_release(brickid, dec_center):
    """LS release of a brick: north 9011; south 9010, or 9012 for re-processed bricks."""
    if dec_center >= NORTH_DEC:
        return 9011
    return 9012 if brickid % 13 == 0 else 9010


def _uniform_in_brick(rng, n, b):
    ra = rng.uniform(b["ra1"], b["ra2"], n)
    s1, s2 = np.sin(np.radians(b["dec1"])), np.sin(np.radians(b["dec2"]))
    dec = np.degrees(np.arcsin(rng.uniform(s1, s2, n)))
    return ra, dec


def brick_population(seed, b, density):
    """All objects of one brick ``b`` (a dict with brickid, name, ra1..dec2).

    ``density`` is the number of LS *targets* per square degree. Returns a dict of
    equal-length arrays (columnar); see the module docstring for the kinds.
    """
    brickid = int(b["brickid"])
    rng = np.random.default_rng([int(seed), brickid])
    area = (np.radians(b["ra2"] - b["ra1"]) *
            (np.sin(np.radians(b["dec2"])) - np.sin(np.radians(b["dec1"])))) * (180 / np.pi) ** 2
    dec_c = (b["dec1"] + b["dec2"]) / 2
    release = brick_release(brickid, dec_c)
    photsys = "N" if dec_c >= NORTH_DEC else "S"
    n_t = rng.poisson(density * area)
    n_x = rng.poisson(0.5 * density * area) + 1          # at least one non-target source
    n_sky = rng.poisson(0.6 * density * area)
    n_gaia = rng.poisson(0.3 * density * area)
    n_sc_pos = min(n_x - 1, rng.poisson(0.03 * density * area) + 1)
    n_sc_none = rng.poisson(0.03 * density * area) + 1
    n_too_pos = min(n_x - 1 - n_sc_pos, rng.poisson(0.01 * density * area))
    n_too_none = rng.poisson(0.01 * density * area)

    # LS sources: OBJID 0 is a non-target, the rest are shuffled.
    n_ls = n_t + n_x
    kind_ls = np.concatenate([[LSX], rng.permutation(np.r_[np.full(n_t, LS), np.full(n_x - 1, LSX)])])
    objid_ls = np.arange(n_ls, dtype=np.int32)
    ra_ls, dec_ls = _uniform_in_brick(rng, n_ls, b)
    lsid_ls = ls_id(release, brickid, objid_ls)

    # secondaries and ToOs: some sit on non-target LS sources (0.1"-0.4" away)
    xidx = rng.permutation(np.where(kind_ls == LSX)[0][1:])
    on = xidx[:n_sc_pos + n_too_pos]
    off = rng.uniform(0.1, 0.4, len(on)) / 3600.0
    pa = rng.uniform(0, 2 * np.pi, len(on))
    ra_on = ra_ls[on] + off * np.sin(pa) / np.cos(np.radians(dec_ls[on]))
    dec_on = dec_ls[on] + off * np.cos(pa)
    n_sc, n_too = n_sc_pos + n_sc_none, n_too_pos + n_too_none
    ra_r, dec_r = _uniform_in_brick(rng, n_sc_none + n_too_none + n_sky + n_gaia, b)
    o = np.cumsum([0, n_sc_none, n_too_none, n_sky, n_gaia])

    ra = np.concatenate([ra_ls, ra_on[:n_sc_pos], ra_r[o[0]:o[1]], ra_on[n_sc_pos:],
                         ra_r[o[1]:o[2]], ra_r[o[2]:o[3]], ra_r[o[3]:o[4]]])
    dec = np.concatenate([dec_ls, dec_on[:n_sc_pos], dec_r[o[0]:o[1]], dec_on[n_sc_pos:],
                          dec_r[o[1]:o[2]], dec_r[o[2]:o[3]], dec_r[o[3]:o[4]]])
    kind = np.concatenate([kind_ls, np.full(n_sc, SCND), np.full(n_too, TOO),
                           np.full(n_sky, SKY), np.full(n_gaia, GAIA)]).astype(np.int8)
    n = len(ra)
    match = np.zeros(n, np.int64)
    match[n_ls:n_ls + n_sc_pos] = lsid_ls[on[:n_sc_pos]]
    match[n_ls + n_sc:n_ls + n_sc + n_too_pos] = lsid_ls[on[n_sc_pos:]]

    # survey of secondaries / ToOs: main (0) or sv3 (1); programs: bit0 dark, bit1 bright
    survey = np.zeros(n, np.int8)
    obsmask = np.zeros(n, np.int8)
    isls = kind == LS
    u = rng.uniform(size=n)
    obsmask[isls] = np.where(u[isls] < 0.55, 1, np.where(u[isls] < 0.9, 2, 3))
    sc_too = (kind == SCND) | (kind == TOO)
    survey[sc_too] = (rng.uniform(size=sc_too.sum()) < 0.3).astype(np.int8)
    obsmask[sc_too] = np.where(rng.uniform(size=sc_too.sum()) < 0.6, 1, 2)
    obsmask[kind == TOO] = 3
    obsmask[kind == SKY] = 3

    # TARGETID, RELEASE (as in targeting files), BRICK_OBJID
    objid = np.zeros(n, np.int32)
    objid[:n_ls] = objid_ls
    rel = np.zeros(n, np.int16)
    rel[:n_ls] = release
    scbit = rng.integers(10, 20, n)
    sec_release = np.where(survey == 0, 500, 200) + scbit
    targetid = np.zeros(n, np.int64)
    targetid[:n_ls] = encode_targetid(objid_ls, brickid, release)
    for k in (SCND, TOO, SKY, GAIA):
        m = kind == k
        cnt = np.zeros(m.sum(), np.int64)
        if k == SCND:       # OBJID = rank within (brick, release)
            r = sec_release[m]
            for v in np.unique(r):
                cnt[r == v] = np.arange((r == v).sum())
            targetid[m] = encode_targetid(cnt, brickid, r)
        elif k == TOO:
            targetid[m] = encode_targetid(np.arange(m.sum()), brickid, 9999)
        elif k == SKY:
            targetid[m] = encode_targetid(np.arange(m.sum()), brickid, release, sky=1)
            rel[m] = release
        else:
            targetid[m] = encode_targetid(np.arange(m.sum()), brickid, 0, gaiadr=2)
            objid[m] = 0

    mag = rng.uniform(18.0, 23.0, n)
    flux_r = (10 ** (-0.4 * (mag - 22.5))).astype(np.float32)
    nanpm = isls & (rng.uniform(size=n) < 0.08)
    pop = dict(
        targetid=targetid, ra=ra, dec=dec, kind=kind, objid=objid, release=rel,
        brickid=np.full(n, brickid, np.int32), brickname=np.full(n, b["name"], "U8"),
        photsys=np.where(isls | (kind == LSX) | (kind == SKY), photsys,
                         np.where(kind == GAIA, "G", "")).astype("U1"),
        match_lsid=match, survey=survey, obsmask=obsmask, scnd_bit=scbit,
        flux_g=(flux_r * rng.uniform(0.3, 1.0, n)).astype(np.float32), flux_r=flux_r,
        flux_z=(flux_r * rng.uniform(1.0, 2.5, n)).astype(np.float32),
        morph=rng.integers(0, 5, n).astype(np.int8),
        pmra=np.where(nanpm, np.nan, rng.normal(0, 5, n)).astype(np.float32),
        pmdec=np.where(nanpm, np.nan, rng.normal(0, 5, n)).astype(np.float32),
        subpriority=rng.uniform(size=n), ebv=rng.uniform(0.01, 0.1, n).astype(np.float32),
        tclass=rng.integers(0, 4, n).astype(np.int8),
        isstd=isls & (rng.uniform(size=n) < 0.04),
    )
    return pop


MORPH = np.array(["PSF", "REX", "DEV", "EXP", "SER"])


def concat(pops):
    """Concatenate populations (dicts of arrays)."""
    if not pops:
        return {}
    return {k: np.concatenate([p[k] for p in pops]) for k in pops[0]}


def take(pop, idx):
    return {k: v[idx] for k, v in pop.items()}
