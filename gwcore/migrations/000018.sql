-- New jobs are announced by add_job, add_jobs and remove_job with a JSON payload
-- {"r": <random>, "count": <n>}, in place of the statement trigger with an empty payload.
drop trigger _900_after_insert on :GW_SCHEMA._private_jobs;
drop function :GW_SCHEMA.tg_jobs__after_insert();

create or replace function :GW_SCHEMA.add_job(
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

    -- revision 0 means the row was inserted, not bumped.
    if result.revision = 0 then
      perform pg_notify('jobs:insert', '{"r":' || random()::text || ',"count":1}');
    end if;
    return result;
  else
    raise exception 'Invalid job_key_mode value, expected ''replace'', ''preserve_run_at'' or ''unsafe_dedupe''.' using errcode = 'GWBKM';
  end if;
end;
$$;

create or replace function :GW_SCHEMA.add_jobs(
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

  -- The count is the number of specs, which overstates new jobs when a key updates a job.
  -- Listeners need only a hint to poll; "r" keeps identical payloads from being merged.
  perform pg_notify(
    'jobs:insert',
    '{"r":' || random()::text || ',"count":' || array_length(specs, 1)::text || '}'
  );

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

create or replace function :GW_SCHEMA.remove_job(job_key text) returns :GW_SCHEMA._private_jobs
language plpgsql strict as $$
declare
  result :GW_SCHEMA._private_jobs;
begin
  delete from :GW_SCHEMA._private_jobs j
   where j.key = remove_job.job_key
     and (j.locked_at is null or j.locked_at < now() - interval '4 hours')
  returning * into result;

  if not (result is null) then
    perform pg_notify('jobs:insert', '{"r":' || random()::text || ',"count":-1}');
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
