-- Job priority, input limits on add_job, and bulk admin functions.
drop function :GW_SCHEMA.add_job(text, json, text, timestamptz, int, text);

-- Arguments left null take the column defaults, so callers can skip any of them.
create function :GW_SCHEMA.add_job(
  identifier text,
  payload json = null,
  queue_name text = null,
  run_at timestamptz = null,
  max_attempts int = null,
  job_key text = null,
  priority int = null
) returns :GW_SCHEMA.jobs
language plpgsql volatile as $$
declare
  result :GW_SCHEMA.jobs;
begin
  if length(identifier) > 128 then
    raise exception 'Task identifier is too long (max length: 128).' using errcode = 'GWBID';
  end if;
  if queue_name is not null and length(queue_name) > 128 then
    raise exception 'Job queue name is too long (max length: 128).' using errcode = 'GWBQN';
  end if;
  if job_key is not null and length(job_key) > 512 then
    raise exception 'Job key is too long (max length: 512).' using errcode = 'GWBJK';
  end if;
  if max_attempts < 1 then
    raise exception 'Job maximum attempts must be at least 1' using errcode = 'GWBMA';
  end if;

  if job_key is not null then
    insert into :GW_SCHEMA.jobs as j
      (task_identifier, payload, queue_name, run_at, max_attempts, key, priority)
    values (
      add_job.identifier,
      coalesce(add_job.payload, '{}'::json),
      add_job.queue_name,
      coalesce(add_job.run_at, now()),
      coalesce(add_job.max_attempts, 25),
      add_job.job_key,
      coalesce(add_job.priority, 0)
    )
    on conflict (key) do update
      set task_identifier = excluded.task_identifier,
          payload = excluded.payload,
          queue_name = excluded.queue_name,
          max_attempts = excluded.max_attempts,
          run_at = excluded.run_at,
          priority = excluded.priority,
          attempts = 0,
          last_error = null
      where j.locked_at is null
    returning * into result;

    if not (result is null) then
      return result;
    end if;

    update :GW_SCHEMA.jobs j
       set key = null, attempts = j.max_attempts
     where j.key = add_job.job_key;
  end if;

  insert into :GW_SCHEMA.jobs
    (task_identifier, payload, queue_name, run_at, max_attempts, key, priority)
  values (
    add_job.identifier,
    coalesce(add_job.payload, '{}'::json),
    add_job.queue_name,
    coalesce(add_job.run_at, now()),
    coalesce(add_job.max_attempts, 25),
    add_job.job_key,
    coalesce(add_job.priority, 0)
  )
  returning * into result;

  return result;
end;
$$;

-- The bulk functions skip jobs that a worker holds, unless its lock is over 4 hours old.
create function :GW_SCHEMA.complete_jobs(job_ids bigint[]) returns setof :GW_SCHEMA.jobs
language sql volatile as $$
  delete from :GW_SCHEMA.jobs
   where id = any(job_ids)
     and (locked_by is null or locked_at < now() - interval '4 hours')
  returning *;
$$;

create function :GW_SCHEMA.permanently_fail_jobs(job_ids bigint[], error_message text = null)
returns setof :GW_SCHEMA.jobs
language sql volatile as $$
  update :GW_SCHEMA.jobs
     set last_error = coalesce(error_message, 'Manually marked as failed'),
         attempts = max_attempts
   where id = any(job_ids)
     and (locked_by is null or locked_at < now() - interval '4 hours')
  returning *;
$$;

-- A null argument keeps the job's current value.
create function :GW_SCHEMA.reschedule_jobs(
  job_ids bigint[],
  run_at timestamptz = null,
  priority int = null,
  attempts int = null,
  max_attempts int = null
) returns setof :GW_SCHEMA.jobs
language sql volatile as $$
  update :GW_SCHEMA.jobs j
     set run_at = coalesce(reschedule_jobs.run_at, j.run_at),
         priority = coalesce(reschedule_jobs.priority, j.priority),
         attempts = coalesce(reschedule_jobs.attempts, j.attempts),
         max_attempts = coalesce(reschedule_jobs.max_attempts, j.max_attempts)
   where j.id = any(job_ids)
     and (j.locked_by is null or j.locked_at < now() - interval '4 hours')
  returning *;
$$;
