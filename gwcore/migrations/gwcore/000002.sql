-- gwcore fetches each task's jobs in the order priority, run_at, id with one ordered scan per task
-- id, so an index that starts with task_id lets a fetch skip the due jobs of tasks that the worker
-- does not run (those of another service sharing the schema, say), however many there are. It
-- replaces gwcore_jobs_fetch_index, which only filtered by task after the scan. The included
-- job_queue_id makes the scan index-only. Rows leave this partial index once locked or failed.
-- NOTE: on a large existing table the build blocks writes to _private_jobs until it finishes.
create index if not exists gwcore_jobs_task_fetch_index
  on :GW_SCHEMA._private_jobs (task_id, priority, run_at, id)
  include (job_queue_id)
  where is_available = true;

drop index if exists :GW_SCHEMA.gwcore_jobs_fetch_index;

-- The candidates of a fetch: for each task id, the first candidate_window due and available jobs
-- in fetch order whose named queue (if any) is unlocked and that carry none of forbidden_flags
-- (null: no filter). Nothing is locked here; the fetch statement locks the candidates in order.
--
-- The planner settings make every per-task scan an ordered walk of gwcore_jobs_task_fetch_index
-- that stops after candidate_window rows. Left to its statistics, which lag far behind a job
-- table that fills and drains within minutes, the planner can prefer to read and sort every due
-- job of a task on each fetch. jit is off because the disabled paths' costs would trigger it.
create or replace function :GW_SCHEMA.gwcore_fetch_candidates(
  task_ids int[],
  candidate_window int,
  forbidden_flags text[]
) returns table (id bigint, priority smallint, run_at timestamptz)
language plpgsql stable
set enable_seqscan = off
set enable_bitmapscan = off
set enable_sort = off
set enable_incremental_sort = off
set jit = off
as $$
begin
  if forbidden_flags is null then
    return query
      select candidate.id, candidate.priority, candidate.run_at
      from unnest(task_ids) as tasks(task_id)
      cross join lateral (
        select jobs.id, jobs.priority, jobs.run_at
        from :GW_SCHEMA._private_jobs as jobs
        where jobs.task_id = tasks.task_id
        and jobs.is_available = true
        and jobs.run_at <= now()
        and (
          jobs.job_queue_id is null
          or jobs.job_queue_id in (
            select queues.id from :GW_SCHEMA._private_job_queues as queues where queues.is_available = true
          )
        )
        order by jobs.priority asc, jobs.run_at asc, jobs.id asc
        limit candidate_window
      ) as candidate;
  else
    return query
      select candidate.id, candidate.priority, candidate.run_at
      from unnest(task_ids) as tasks(task_id)
      cross join lateral (
        select jobs.id, jobs.priority, jobs.run_at
        from :GW_SCHEMA._private_jobs as jobs
        where jobs.task_id = tasks.task_id
        and jobs.is_available = true
        and jobs.run_at <= now()
        and (
          jobs.job_queue_id is null
          or jobs.job_queue_id in (
            select queues.id from :GW_SCHEMA._private_job_queues as queues where queues.is_available = true
          )
        )
        and ((jobs.flags ?| forbidden_flags) is not true)
        order by jobs.priority asc, jobs.run_at asc, jobs.id asc
        limit candidate_window
      ) as candidate;
  end if;
end;
$$;
