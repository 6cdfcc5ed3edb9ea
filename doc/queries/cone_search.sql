-- Every object within :radius degrees of (:ra, :dec), nearest first.
-- q3c_radial_query uses the q3c index of photometry (ix_photometry_q3c_ang2ipix).
SELECT p.targetid, p.ra, p.dec,
       q3c_dist(p.ra, p.dec, :ra, :dec) * 3600 AS dist_arcsec,
       p.morphtype, p.flux_g, p.flux_r, p.flux_z
FROM :"schema".photometry AS p
WHERE q3c_radial_query(p.ra, p.dec, :ra, :dec, :radius)
ORDER BY dist_arcsec, p.targetid;
