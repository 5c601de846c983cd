-- job_key_mode chooses what add_job does when a job with the same key exists:
--   replace          update the unlocked job (the default)
--   preserve_run_at  the same, but keep run_at of a job that has not been attempted yet
--   unsafe_dedupe    keep the existing job, even a running one, and only bump its revision
drop function :GW_SCHEMA.add_job(text, json, text, timestamptz, int, text, int, text[]);

create function :GW_SCHEMA.add_job(
  identifier text,
  payload json = null,
  queue_name text = null,
  run_at timestamptz = null,
  max_attempts int = null,
  job_key text = null,
  priority int = null,
  flags text[] = null,
  job_key_mode text = 'replace'
) returns :GW_SCHEMA.jobs
language plpgsql volatile as $$
declare
  flag_object jsonb;
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
    raise exception 'Job maximum attempts must be at least 1.' using errcode = 'GWBMA';
  end if;

  select jsonb_object_agg(f.name, true) into flag_object from unnest(add_job.flags) as f(name);

  if job_key is not null and (job_key_mode is null or job_key_mode in ('replace', 'preserve_run_at')) then
    insert into :GW_SCHEMA.jobs as j
      (task_identifier, payload, queue_name, run_at, max_attempts, key, priority, flags)
    values (
      add_job.identifier,
      coalesce(add_job.payload, '{}'::json),
      add_job.queue_name,
      coalesce(add_job.run_at, now()),
      coalesce(add_job.max_attempts, 25),
      add_job.job_key,
      coalesce(add_job.priority, 0),
      flag_object
    )
    on conflict (key) do update
      set task_identifier = excluded.task_identifier,
          payload = excluded.payload,
          queue_name = excluded.queue_name,
          max_attempts = excluded.max_attempts,
          run_at = case
            when add_job.job_key_mode = 'preserve_run_at' and j.attempts = 0 then j.run_at
            else excluded.run_at
          end,
          priority = excluded.priority,
          revision = j.revision + 1,
          flags = excluded.flags,
          attempts = 0,
          last_error = null
      where j.locked_at is null
    returning * into result;

    if not (result is null) then
      return result;
    end if;

    -- The existing job is running: strip its key and retries and insert a new job below.
    update :GW_SCHEMA.jobs j
       set key = null, attempts = j.max_attempts
     where j.key = add_job.job_key;
  elsif job_key is not null and job_key_mode = 'unsafe_dedupe' then
    -- NOTE: a change that happens after the existing job started is never acted on.
    insert into :GW_SCHEMA.jobs as j
      (task_identifier, payload, queue_name, run_at, max_attempts, key, priority, flags)
    values (
      add_job.identifier,
      coalesce(add_job.payload, '{}'::json),
      add_job.queue_name,
      coalesce(add_job.run_at, now()),
      coalesce(add_job.max_attempts, 25),
      add_job.job_key,
      coalesce(add_job.priority, 0),
      flag_object
    )
    on conflict (key) do update set revision = j.revision + 1
    returning * into result;
    return result;
  elsif job_key is not null then
    raise exception 'Invalid job_key_mode value, expected ''replace'', ''preserve_run_at'' or ''unsafe_dedupe''.' using errcode = 'GWBKM';
  end if;

  insert into :GW_SCHEMA.jobs
    (task_identifier, payload, queue_name, run_at, max_attempts, key, priority, flags)
  values (
    add_job.identifier,
    coalesce(add_job.payload, '{}'::json),
    add_job.queue_name,
    coalesce(add_job.run_at, now()),
    coalesce(add_job.max_attempts, 25),
    add_job.job_key,
    coalesce(add_job.priority, 0),
    flag_object
  )
  returning * into result;

  return result;
end;
$$;

-- A job that a worker holds cannot be deleted, so it loses its key and its retries instead.
create or replace function :GW_SCHEMA.remove_job(job_key text) returns :GW_SCHEMA.jobs
language plpgsql strict as $$
declare
  result :GW_SCHEMA.jobs;
begin
  delete from :GW_SCHEMA.jobs j
   where j.key = remove_job.job_key and j.locked_at is null
  returning * into result;

  if not (result is null) then
    return result;
  end if;

  update :GW_SCHEMA.jobs j
     set attempts = j.max_attempts, key = null
   where j.key = remove_job.job_key
  returning * into result;

  return result;
end;
$$;
