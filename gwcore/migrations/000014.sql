--! breaking: add_job and reschedule_jobs take int again and convert to smallint inside
drop function :GW_SCHEMA.add_job(text, json, text, timestamptz, smallint, text, smallint, text[], text);

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
) returns :GW_SCHEMA.jobs
language plpgsql as $$
declare
  result :GW_SCHEMA.jobs;
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
    insert into :GW_SCHEMA.tasks (identifier) values (add_job.identifier)
    on conflict do nothing;

    if add_job.queue_name is not null then
      insert into :GW_SCHEMA.job_queues (queue_name) values (add_job.queue_name)
      on conflict do nothing;
    end if;

    -- Keeps the existing job even when it is running, so a change that happens after it
    -- started is never acted on. The revision bump makes the row come back from "returning".
    insert into :GW_SCHEMA.jobs as j
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
    from :GW_SCHEMA.tasks t
    left join :GW_SCHEMA.job_queues q on q.queue_name = add_job.queue_name
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

drop function :GW_SCHEMA.reschedule_jobs(bigint[], timestamptz, smallint, smallint, smallint);

create function :GW_SCHEMA.reschedule_jobs(
  job_ids bigint[],
  run_at timestamptz default null::timestamptz,
  priority int default null::int,
  attempts int default null::int,
  max_attempts int default null::int
) returns setof :GW_SCHEMA.jobs
language sql as $$
  update :GW_SCHEMA.jobs j
     set run_at = coalesce(reschedule_jobs.run_at, j.run_at),
         priority = coalesce(reschedule_jobs.priority::smallint, j.priority),
         attempts = coalesce(reschedule_jobs.attempts::smallint, j.attempts),
         max_attempts = coalesce(reschedule_jobs.max_attempts::smallint, j.max_attempts),
         updated_at = now()
   where j.id = any(job_ids)
     and (j.locked_at is null or j.locked_at < now() - interval '4 hours')
  returning *;
$$;
