-- Which answer ended a transaction: the SHA-256 of the answering device's id
-- and its confirmation as received (`verify::answer_digest`); NULL when
-- nothing answered (expired, cancelled) or for rows ended before this
-- migration. A relay whose result was lost posts the same answer again and
-- hears the stored outcome, whatever the method (signature, OCRA, PIV) or the
-- answer (a decline too); any other answer gets `not_pending`.
ALTER TABLE transactions ADD COLUMN answer_sha256 BLOB
    CHECK (answer_sha256 IS NULL OR length(answer_sha256) = 32);
