-- gwcore fetches in the order priority, run_at, id. graphile-worker's jobs_main_index sorts by
-- (priority, run_at) only, so without this index every fetch sorts all jobs that share a run_at,
-- which is every job of one add_jobs batch. Rows leave this partial index once locked or failed.
-- NOTE: on a large existing table the build blocks writes to _private_jobs until it finishes.
create index if not exists gwcore_jobs_fetch_index
  on :GW_SCHEMA._private_jobs (priority, run_at, id)
  include (task_id, job_queue_id)
  where is_available = true;
