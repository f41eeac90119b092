"""A per-micro-batch value as a column that leaves the generated code unchanged (so Spark's code cache hits)."""

from __future__ import annotations

from chispa import assert_df_equality
from pyspark.sql import functions as F

from lambda_pipeline.core.jvm import generated_code
from lambda_pipeline.core.literals import with_constant


def _frame(spark):
    return spark.range(20).withColumn("twice", F.col("id") * 2).filter(F.col("id") % 3 != 0)


def test_a_constant_compiles_to_the_same_code_for_every_value(spark) -> None:
    five, six = (generated_code(with_constant(_frame(spark), "tag", value)) for value in (5_000_017, 6_000_029))
    assert five and five == six
    assert not any("5000017" in source for source in five)
    # The control: a plain literal is written into the source, so each value is a new class to compile.
    plain = [generated_code(_frame(spark).withColumn("tag", F.lit(v).cast("long"))) for v in (5_000_017, 6_000_029)]
    assert plain[0] != plain[1] and any("5000017L" in source for source in plain[0])


def test_a_constant_column_holds_the_value_on_every_row_and_keeps_the_column_order(spark) -> None:
    frame = _frame(spark)
    got = with_constant(frame, "tag", 7)
    assert_df_equality(got, frame.withColumn("tag", F.lit(7).cast("long")), ignore_nullable=True)
    replaced = with_constant(frame.withColumn("tag", F.lit(1)).select("tag", "id", "twice"), "tag", 9)
    assert replaced.columns == ["tag", "id", "twice"]
    assert {row.tag for row in replaced.collect()} == {9} and replaced.count() == frame.count()
    assert with_constant(frame, "none", None).filter(F.col("none").isNull()).count() == frame.count()
