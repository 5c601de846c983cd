-- A partial index that covers only jobs with attempts left replaces the full one.
create index jobs_priority_run_at_id_locked_at_without_failures_idx
  on :GW_SCHEMA.jobs (priority, run_at, id, locked_at)
  where attempts < max_attempts;

drop index :GW_SCHEMA.jobs_priority_run_at_id_idx;
