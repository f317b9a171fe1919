-- PostgreSQL only (its audit chain is computed at commit by a trigger): nothing to change here.
SELECT 1;
