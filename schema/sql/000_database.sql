-- The database that holds every usagepipe object. Created first, by every
-- migrate run (IF NOT EXISTS: a no-op once it exists).
CREATE DATABASE IF NOT EXISTS {{.DB}}
