-- Drop any default of jobs.queue_name. A schema that these migrations created has none, so
-- there this changes nothing.
alter table :GW_SCHEMA.jobs alter column queue_name drop default;
