/*
 * Ingest's dedup: which line of a micro-batch is the first copy of an event id within the dedup horizon.
 *
 * Spark's dropDuplicatesWithinWatermark evicts expired keys by scanning its whole state at every
 * micro-batch: at 10,000 events/s and a 15-minute horizon that is 9 M keys, seconds of task time per
 * micro-batch. Here the state is one value per event id with a time to live of the horizon
 * (transformWithState, TTLConfig): a key past its horizon is invisible at once, and Spark's TTL eviction
 * visits only the expired keys through its index by expiry time. The cost of a micro-batch follows the
 * keys it receives and the keys that expire, not the keys held.
 *
 * Every line comes out, once, with one column appended: true on the first copy of a valid key not seen
 * within the horizon, false on every other line. The copies of a key within one micro-batch are ordered by
 * the given columns (nulls first), so a replayed micro-batch marks the same line. Keys that do not start
 * with the valid prefix (lines already judged invalid) touch no state.
 *
 * Built by lambda_pipeline/core/project_jars.py (javac, cached) and shipped in the artifact's jars/.
 */
package io.lambdapipeline.dedup;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.apache.spark.api.java.function.MapFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.streaming.OutputMode;
import org.apache.spark.sql.streaming.StatefulProcessor;
import org.apache.spark.sql.streaming.TTLConfig;
import org.apache.spark.sql.streaming.TimeMode;
import org.apache.spark.sql.streaming.TimerValues;
import org.apache.spark.sql.streaming.ValueState;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import scala.collection.Iterator;
import scala.jdk.javaapi.CollectionConverters;

public final class FirstCopies {

    private FirstCopies() {
    }

    /** {@code input} with {@code flag} appended (see the file's comment); a streaming or a batch Dataset. */
    public static Dataset<Row> mark(
            Dataset<Row> input, String keyColumn, String validPrefix, String[] orderColumns, String flag,
            long horizonMillis) {
        StructType schema = input.schema();
        int key = schema.fieldIndex(keyColumn);
        int[] order = Arrays.stream(orderColumns).mapToInt(schema::fieldIndex).toArray();
        StructType output = schema.add(flag, DataTypes.BooleanType, false);
        MapFunction<Row, String> keyOf = row -> row.getString(key);
        return input
                .groupByKey(keyOf, Encoders.STRING())
                .transformWithState(
                        new Processor(validPrefix, order, horizonMillis),
                        TimeMode.ProcessingTime(),
                        OutputMode.Append(),
                        Encoders.row(output));
    }

    static final class Processor extends StatefulProcessor<String, Row, Row> {
        private static final long serialVersionUID = 1L;
        private final String validPrefix;
        private final int[] order;
        private final long horizonMillis;
        private transient ValueState<Boolean> seen;

        Processor(String validPrefix, int[] order, long horizonMillis) {
            this.validPrefix = validPrefix;
            this.order = order;
            this.horizonMillis = horizonMillis;
        }

        @Override
        public void init(OutputMode outputMode, TimeMode timeMode) {
            seen = getHandle().getValueState(
                    "seen", Encoders.BOOLEAN(), TTLConfig.apply(Duration.ofMillis(horizonMillis)));
        }

        @Override
        public Iterator<Row> handleInputRows(String key, Iterator<Row> rows, TimerValues timerValues) {
            List<Row> lines = new ArrayList<>();
            CollectionConverters.asJava(rows).forEachRemaining(lines::add);
            boolean first = false;
            if (key != null && key.startsWith(validPrefix) && !seen.exists()) {
                seen.update(Boolean.TRUE); // expires one horizon after this micro-batch's time
                first = true;
            }
            if (lines.size() > 1) {
                lines.sort(this::compare);
            }
            List<Row> out = new ArrayList<>(lines.size());
            for (Row line : lines) {
                out.add(withFlag(line, first));
                first = false;
            }
            return CollectionConverters.asScala(out.iterator());
        }

        private int compare(Row left, Row right) {
            for (int index : order) {
                Object a = left.get(index);
                Object b = right.get(index);
                if (a == b) {
                    continue;
                }
                if (a == null) {
                    return -1;
                }
                if (b == null) {
                    return 1;
                }
                int byValue = a.toString().compareTo(b.toString());
                if (byValue != 0) {
                    return byValue;
                }
            }
            return 0;
        }

        private static Row withFlag(Row line, boolean flag) {
            Object[] values = new Object[line.length() + 1];
            for (int i = 0; i < line.length(); i++) {
                values[i] = line.get(i);
            }
            values[line.length()] = flag;
            return RowFactory.create(values);
        }
    }
}
