--! breaking: marks the switch from graphile-worker 0.16 to 0.17; the schema does not change
select 1;
