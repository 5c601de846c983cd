-- Job keys, and lock columns on jobs so a job's lock can be checked without its queue.
alter table :GW_SCHEMA.jobs add column key text unique check (length(key) > 0);
alter table :GW_SCHEMA.jobs add column locked_at timestamptz;
alter table :GW_SCHEMA.jobs add column locked_by text;

-- Jobs that are running right now take over the lock of their queue.
update :GW_SCHEMA.jobs j
   set locked_at = q.locked_at, locked_by = q.locked_by
  from :GW_SCHEMA.job_queues q
 where q.queue_name = j.queue_name
   and q.locked_at is not null;

drop function if exists :GW_SCHEMA.add_job(text, json, text, timestamptz, int);

-- With a job_key, an unlocked job of that key is updated in place. A locked one is
-- already running, so it loses its key and its retries and a new job is inserted.
create function :GW_SCHEMA.add_job(
  identifier text,
  payload json = '{}',
  queue_name text = null,
  run_at timestamptz = now(),
  max_attempts int = 25,
  job_key text = null
) returns :GW_SCHEMA.jobs
language plpgsql volatile as $$
declare
  result :GW_SCHEMA.jobs;
begin
  if job_key is not null then
    insert into :GW_SCHEMA.jobs as j
      (task_identifier, payload, queue_name, run_at, max_attempts, key)
    values
      (add_job.identifier, add_job.payload, add_job.queue_name, add_job.run_at,
       add_job.max_attempts, add_job.job_key)
    on conflict (key) do update
      set task_identifier = excluded.task_identifier,
          payload = excluded.payload,
          -- the queue changes only when the caller names one
          queue_name = coalesce(add_job.queue_name, j.queue_name),
          max_attempts = excluded.max_attempts,
          run_at = excluded.run_at,
          attempts = 0,
          last_error = null
      where j.locked_at is null
    returning * into result;

    -- A row value "is null" only when every field is null.
    if not (result is null) then
      return result;
    end if;

    update :GW_SCHEMA.jobs j
       set key = null, attempts = j.max_attempts
     where j.key = add_job.job_key;
  end if;

  insert into :GW_SCHEMA.jobs
    (task_identifier, payload, queue_name, run_at, max_attempts, key)
  values
    (add_job.identifier, add_job.payload, add_job.queue_name, add_job.run_at,
     add_job.max_attempts, add_job.job_key)
  returning * into result;

  return result;
end;
$$;

-- Deletes the job with this key unless a worker holds it.
create function :GW_SCHEMA.remove_job(job_key text) returns :GW_SCHEMA.jobs
language sql strict volatile as $$
  delete from :GW_SCHEMA.jobs
   where key = job_key and locked_at is null
  returning *;
$$;

create or replace function :GW_SCHEMA.get_job(
  worker_id text,
  task_identifiers text[] = null,
  job_expiry interval = interval '4 hours'
) returns :GW_SCHEMA.jobs
language plpgsql volatile as $$
declare
  picked_id bigint;
  picked_queue text;
  started timestamptz := now();
  result :GW_SCHEMA.jobs;
begin
  if worker_id is null or length(worker_id) < 10 then
    raise exception 'invalid worker id';
  end if;

  select q.queue_name, j.id
    into picked_queue, picked_id
    from :GW_SCHEMA.jobs j
    join :GW_SCHEMA.job_queues q on q.queue_name = j.queue_name
   where (q.locked_at is null or q.locked_at < started - job_expiry)
     and j.run_at <= started
     and j.attempts < j.max_attempts
     and (task_identifiers is null or j.task_identifier = any(task_identifiers))
   order by j.priority, j.run_at, j.id
   limit 1
   for update of q skip locked;

  if picked_queue is null then
    return null;
  end if;

  update :GW_SCHEMA.job_queues q
     set locked_by = worker_id, locked_at = started
   where q.queue_name = picked_queue;

  update :GW_SCHEMA.jobs j
     set attempts = j.attempts + 1, locked_by = worker_id, locked_at = started
   where j.id = picked_id
  returning * into result;

  return result;
end;
$$;

create or replace function :GW_SCHEMA.fail_job(worker_id text, job_id bigint, error_message text)
returns :GW_SCHEMA.jobs
language plpgsql volatile strict as $$
declare
  result :GW_SCHEMA.jobs;
begin
  update :GW_SCHEMA.jobs j
     set last_error = error_message,
         run_at = greatest(now(), j.run_at) + (exp(least(j.attempts, 10))::text || ' seconds')::interval,
         locked_by = null,
         locked_at = null
   where j.id = job_id and j.locked_by = worker_id
  returning * into result;

  update :GW_SCHEMA.job_queues q
     set locked_by = null, locked_at = null
   where q.queue_name = result.queue_name and q.locked_by = worker_id;

  return result;
end;
$$;
