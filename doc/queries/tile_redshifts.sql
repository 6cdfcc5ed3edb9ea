-- The redshifts of one tile, each with its targeting bits on that tile and its photometry.
-- ztile.targetphotid is the target row of the same target, survey and tile.  The
-- *_target bitmasks shown are the main survey's (SV tiles: sv1_desi_target ...).
SELECT z.targetid, z.tileid, z.survey, z.program,
       z.z, z.zerr, z.zwarn, z.spectype, z.deltachi2,
       t.desi_target, t.bgs_target, t.mws_target, t.scnd_target,
       p.release, p.morphtype, p.flux_g, p.flux_r, p.flux_z, p.ebv
FROM :"schema".ztile AS z
JOIN :"schema".target AS t ON t.id = z.targetphotid
JOIN :"schema".photometry AS p ON p.targetid = z.targetid
WHERE z.tileid = :tileid
ORDER BY z.targetid;
