-- The primary redshift of every object within :radius degrees of (:ra, :dec): one row per
-- TARGETID, the spectrum zcat_primary selects among all its ztile rows (all tiles,
-- surveys and programs); zcat_nspec says how many there were.
SELECT z.targetid, p.ra, p.dec, z.z, z.zerr, z.zwarn, z.spectype,
       z.tileid, z.survey, z.program, z.zcat_nspec
FROM :"schema".photometry AS p
JOIN :"schema".ztile AS z ON z.targetid = p.targetid
WHERE q3c_radial_query(p.ra, p.dec, :ra, :dec, :radius)
  AND z.zcat_primary
ORDER BY z.targetid;
