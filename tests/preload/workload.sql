-- A scripted in-memory SQLite workload for tests/preload/run.sh: its output
-- with and without trimalloc preloaded must be identical.
.bail on
.headers off
.mode list
PRAGMA cache_size = -16000;

CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT, score REAL);
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                    amount INTEGER, note TEXT);

WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000)
INSERT INTO customers SELECT x, 'cust' || x, 'r' || (x % 7), (x * 37 % 1000) / 10.0 FROM c;

WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000)
INSERT INTO orders
SELECT x, (x * 7919) % 5000 + 1, (x * 104729) % 10000,
       printf('note-%08d-%s', x, substr(hex(x * x), 1, 12)) FROM c;

CREATE INDEX orders_customer ON orders(customer_id);
CREATE INDEX customers_region ON customers(region, score);
CREATE INDEX orders_note ON orders(note);

SELECT 'totals', count(*), sum(amount), min(note), max(note) FROM orders;

SELECT 'region', c.region, count(*), sum(o.amount), round(avg(o.amount), 3)
  FROM orders o JOIN customers c ON c.id = o.customer_id
 GROUP BY c.region ORDER BY c.region;

SELECT 'top', c.name, sum(o.amount) AS t
  FROM customers c JOIN orders o ON o.customer_id = c.id
 GROUP BY c.id ORDER BY t DESC, c.id LIMIT 10;

SELECT 'concat', length(group_concat(note, ',')) FROM orders WHERE amount < 500;

SELECT 'window', id, amount,
       sum(amount) OVER (ORDER BY id ROWS BETWEEN 5 PRECEDING AND CURRENT ROW)
  FROM orders WHERE id % 6000 = 0;

UPDATE orders SET note = upper(note) || printf('%.*c', amount % 300, 'x') WHERE id % 3 = 0;
SELECT 'grown', sum(length(note)), max(length(note)) FROM orders;

SELECT 'distinct', count(DISTINCT substr(note, 1, 9)) FROM orders;
SELECT 'sorted', note FROM orders ORDER BY note DESC LIMIT 3;

DELETE FROM orders WHERE amount % 2 = 0;
SELECT 'after delete', count(*), total(amount) FROM orders;

CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300)
INSERT INTO blobs SELECT x, zeroblob(x * 1000) FROM c;
UPDATE blobs SET b = b || zeroblob(id * 10) WHERE id % 2 = 0;
SELECT 'blobs', count(*), sum(length(b)) FROM blobs;

SELECT 'json', json_group_array(json_object('id', id, 'a', amount))
  FROM (SELECT id, amount FROM orders ORDER BY id LIMIT 5);

CREATE TABLE summary AS
SELECT c.region AS region, o.amount / 1000 AS bucket, count(*) AS n
  FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY 1, 2;
SELECT 'summary', region, group_concat(n, ' ') FROM (SELECT * FROM summary ORDER BY region, bucket)
 GROUP BY region ORDER BY region;

DROP INDEX orders_note;
VACUUM;
SELECT 'integrity', * FROM pragma_integrity_check;
SELECT 'final', (SELECT count(*) FROM customers), (SELECT count(*) FROM orders),
       (SELECT count(*) FROM blobs);
