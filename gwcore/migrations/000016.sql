--! breaking: the tables become private; the functions are recreated against the new names
alter table :GW_SCHEMA.jobs rename to _private_jobs;
alter table :GW_SCHEMA.job_queues rename to _private_job_queues;
alter table :GW_SCHEMA.tasks rename to _private_tasks;
alter table :GW_SCHEMA.known_crontabs rename to _private_known_crontabs;

drop function :GW_SCHEMA.add_job(text, json, text, timestamptz, int, text, int, text[], text);

create function :GW_SCHEMA.add_job(
  identifier text,
  payload json default null::json,
  queue_name text default null::text,
  run_at timestamptz default null::timestamptz,
  max_attempts int default null::int,
  job_key text default null::text,
  priority int default null::int,
  flags text[] default null::text[],
  job_key_mode text default 'replace'::text
) returns :GW_SCHEMA._private_jobs
language plpgsql as $$
declare
  result :GW_SCHEMA._private_jobs;
begin
  if job_key is null or job_key_mode is null or job_key_mode in ('replace', 'preserve_run_at') then
    select * into result
      from :GW_SCHEMA.add_jobs(
        array[cast(row(
          add_job.identifier, add_job.payload, add_job.queue_name, add_job.run_at,
          add_job.max_attempts::smallint, add_job.job_key, add_job.priority::smallint,
          add_job.flags
        ) as :GW_SCHEMA.job_spec)],
        add_job.job_key_mode = 'preserve_run_at'
      )
     limit 1;
    return result;
  elsif job_key_mode = 'unsafe_dedupe' then
    insert into :GW_SCHEMA._private_tasks (identifier) values (add_job.identifier)
    on conflict do nothing;

    if add_job.queue_name is not null then
      insert into :GW_SCHEMA._private_job_queues (queue_name) values (add_job.queue_name)
      on conflict do nothing;
    end if;

    -- Keeps the existing job even when it is running, so a change that happens after it
    -- started is never acted on. The revision bump makes the row come back from "returning".
    insert into :GW_SCHEMA._private_jobs as j
      (job_queue_id, task_id, payload, run_at, max_attempts, key, priority, flags)
    select
      q.id,
      t.id,
      coalesce(add_job.payload, '{}'::json),
      coalesce(add_job.run_at, now()),
      coalesce(add_job.max_attempts::smallint, 25::smallint),
      add_job.job_key,
      coalesce(add_job.priority::smallint, 0::smallint),
      (select jsonb_object_agg(f.name, true) from unnest(add_job.flags) as f(name))
    from :GW_SCHEMA._private_tasks t
    left join :GW_SCHEMA._private_job_queues q on q.queue_name = add_job.queue_name
    where t.identifier = add_job.identifier
    on conflict (key) do update
      set revision = j.revision + 1, updated_at = now()
    returning * into result;
    return result;
  else
    raise exception 'Invalid job_key_mode value, expected ''replace'', ''preserve_run_at'' or ''unsafe_dedupe''.' using errcode = 'GWBKM';
  end if;
end;
$$;

drop function :GW_SCHEMA.add_jobs(:GW_SCHEMA.job_spec[], boolean);

create function :GW_SCHEMA.add_jobs(
  specs :GW_SCHEMA.job_spec[],
  job_key_preserve_run_at boolean default false
) returns setof :GW_SCHEMA._private_jobs
language plpgsql as $$
begin
  insert into :GW_SCHEMA._private_tasks (identifier)
  select distinct s.identifier from unnest(specs) s
  on conflict do nothing;

  insert into :GW_SCHEMA._private_job_queues (queue_name)
  select distinct s.queue_name from unnest(specs) s
   where s.queue_name is not null
  on conflict do nothing;

  -- A job of the same key that is running or out of attempts keeps running, but loses its key
  -- and its retries, so the insert below creates a new job.
  update :GW_SCHEMA._private_jobs j
     set key = null, attempts = j.max_attempts, updated_at = now()
    from unnest(specs) s
   where s.job_key is not null
     and j.key = s.job_key
     and j.is_available is not true;

  return query
  insert into :GW_SCHEMA._private_jobs as j
    (job_queue_id, task_id, payload, run_at, max_attempts, key, priority, flags)
  select
    q.id,
    t.id,
    coalesce(s.payload, '{}'::json),
    coalesce(s.run_at, now()),
    coalesce(s.max_attempts, 25),
    s.job_key,
    coalesce(s.priority, 0),
    (select jsonb_object_agg(f.name, true) from unnest(s.flags) as f(name))
  from unnest(specs) s
  join :GW_SCHEMA._private_tasks t on t.identifier = s.identifier
  left join :GW_SCHEMA._private_job_queues q on q.queue_name = s.queue_name
  on conflict (key) do update
    set job_queue_id = excluded.job_queue_id,
        task_id = excluded.task_id,
        payload = case
          when json_typeof(j.payload) = 'array' and json_typeof(excluded.payload) = 'array'
            then (j.payload::jsonb || excluded.payload::jsonb)::json
          else excluded.payload
        end,
        max_attempts = excluded.max_attempts,
        run_at = case
          when job_key_preserve_run_at is true and j.attempts = 0 then j.run_at
          else excluded.run_at
        end,
        priority = excluded.priority,
        revision = j.revision + 1,
        flags = excluded.flags,
        attempts = 0,
        last_error = null,
        updated_at = now()
    where j.locked_at is null
  returning *;
end;
$$;

drop function :GW_SCHEMA.complete_jobs(bigint[]);

create function :GW_SCHEMA.complete_jobs(job_ids bigint[]) returns setof :GW_SCHEMA._private_jobs
language sql as $$
  delete from :GW_SCHEMA._private_jobs
   where id = any(job_ids)
     and (locked_at is null or locked_at < now() - interval '4 hours')
  returning *;
$$;

drop function :GW_SCHEMA.force_unlock_workers(text[]);

create function :GW_SCHEMA.force_unlock_workers(worker_ids text[]) returns void
language sql as $$
  update :GW_SCHEMA._private_jobs
     set locked_at = null, locked_by = null
   where locked_by = any(worker_ids);
  update :GW_SCHEMA._private_job_queues
     set locked_at = null, locked_by = null
   where locked_by = any(worker_ids);
$$;

drop function :GW_SCHEMA.permanently_fail_jobs(bigint[], text);

create function :GW_SCHEMA.permanently_fail_jobs(
  job_ids bigint[],
  error_message text default null::text
) returns setof :GW_SCHEMA._private_jobs
language sql as $$
  update :GW_SCHEMA._private_jobs
     set last_error = coalesce(error_message, 'Manually marked as failed'),
         attempts = max_attempts,
         updated_at = now()
   where id = any(job_ids)
     and (locked_at is null or locked_at < now() - interval '4 hours')
  returning *;
$$;

drop function :GW_SCHEMA.remove_job(text);

create function :GW_SCHEMA.remove_job(job_key text) returns :GW_SCHEMA._private_jobs
language plpgsql strict as $$
declare
  result :GW_SCHEMA._private_jobs;
begin
  delete from :GW_SCHEMA._private_jobs j
   where j.key = remove_job.job_key
     and (j.locked_at is null or j.locked_at < now() - interval '4 hours')
  returning * into result;

  if not (result is null) then
    return result;
  end if;

  -- The job is running: strip its key and retries so it does not run again after this attempt.
  update :GW_SCHEMA._private_jobs j
     set key = null, attempts = j.max_attempts, updated_at = now()
   where j.key = remove_job.job_key
  returning * into result;

  return result;
end;
$$;

drop function :GW_SCHEMA.reschedule_jobs(bigint[], timestamptz, int, int, int);

create function :GW_SCHEMA.reschedule_jobs(
  job_ids bigint[],
  run_at timestamptz default null::timestamptz,
  priority int default null::int,
  attempts int default null::int,
  max_attempts int default null::int
) returns setof :GW_SCHEMA._private_jobs
language sql as $$
  update :GW_SCHEMA._private_jobs j
     set run_at = coalesce(reschedule_jobs.run_at, j.run_at),
         priority = coalesce(reschedule_jobs.priority::smallint, j.priority),
         attempts = coalesce(reschedule_jobs.attempts::smallint, j.attempts),
         max_attempts = coalesce(reschedule_jobs.max_attempts::smallint, j.max_attempts),
         updated_at = now()
   where j.id = any(job_ids)
     and (j.locked_at is null or j.locked_at < now() - interval '4 hours')
  returning *;
$$;
