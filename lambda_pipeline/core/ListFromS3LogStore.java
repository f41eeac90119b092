/*
 * Delta's S3 log store, listing a table's log from a version instead of whole.
 *
 * Delta reads a table's state with listFrom(<version>): the log's files from that version on. Delta's
 * S3SingleDriverLogStore lists the whole _delta_log folder for it, 1,000 keys per request, so a reader of a
 * table that commits every few seconds (the query server, the dashboard) makes more requests each hour.
 * Delta's own remedy (delta.enableFastS3AListFrom) links against Hadoop internals that changed in Hadoop
 * 3.4, and fails with NoSuchMethodError on the Hadoop Spark 4 ships. This class asks S3 for the keys after
 * the version (ListObjectsV2 startAfter), through the public S3AInternals client: one request, whatever the
 * log's length. Writing is Delta's, unchanged: it arbitrates between the threads of one driver only.
 *
 * Built by lambda_pipeline/core/project_jars.py (javac, cached) and shipped in the artifact's jars/.
 */
package io.lambdapipeline.delta;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.Iterator;
import java.util.List;

import io.delta.storage.S3SingleDriverLogStore;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.FilterFileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.s3a.S3AFileSystem;
import software.amazon.awssdk.services.s3.S3Client;
import software.amazon.awssdk.services.s3.model.ListObjectsV2Request;
import software.amazon.awssdk.services.s3.model.ListObjectsV2Response;
import software.amazon.awssdk.services.s3.model.S3Object;

public class ListFromS3LogStore extends S3SingleDriverLogStore {

    public ListFromS3LogStore(Configuration hadoopConf) {
        super(hadoopConf);
    }

    @Override
    public Iterator<FileStatus> listFrom(Path path, Configuration hadoopConf) throws IOException {
        FileSystem fs = path.getFileSystem(hadoopConf);
        FileSystem raw = fs;
        while (raw instanceof FilterFileSystem) {
            raw = ((FilterFileSystem) raw).getRawFileSystem();
        }
        if (!(raw instanceof S3AFileSystem)) {
            return super.listFrom(path, hadoopConf); // EMRFS, local disk: Delta's own listing
        }
        S3AFileSystem s3a = (S3AFileSystem) raw;
        Path resolved = s3a.makeQualified(path);
        Path parent = resolved.getParent();
        String name = resolved.getName();
        String prefix = s3a.pathToKey(parent) + "/";
        S3Client client = s3a.getS3AInternals().getAmazonS3Client("lambda-pipeline listFrom");
        ListObjectsV2Request.Builder request = ListObjectsV2Request.builder()
                .bucket(s3a.getBucket())
                .prefix(prefix)
                .delimiter("/") // the log's own files, as listStatus gives them: not _commits/ or _sidecars/
                .maxKeys(hadoopConf.getInt("fs.s3a.paging.maximum", 1000));
        String after = keyBefore(prefix + name);
        if (after != null) {
            request.startAfter(after);
        }
        List<FileStatus> found = new ArrayList<>();
        long blockSize = s3a.getDefaultBlockSize(parent);
        String token = null;
        do {
            if (token != null) {
                request.continuationToken(token);
            }
            ListObjectsV2Response page = client.listObjectsV2(request.build());
            for (S3Object object : page.contents()) {
                String child = object.key().substring(prefix.length());
                if (child.isEmpty() || child.compareTo(name) < 0) {
                    continue;
                }
                long modified = object.lastModified() == null ? 0L : object.lastModified().toEpochMilli();
                found.add(new FileStatus(object.size(), false, 1, blockSize, modified, new Path(parent, child)));
            }
            token = Boolean.TRUE.equals(page.isTruncated()) ? page.nextContinuationToken() : null;
        } while (token != null);
        if (found.isEmpty() && !logExists(client, s3a.getBucket(), prefix)) {
            throw new FileNotFoundException("No such file or directory: " + parent);
        }
        found.sort(Comparator.comparing(status -> status.getPath().getName()));
        return found.iterator();
    }

    /** Whether any key lies under the log's prefix: one request, made only when nothing follows the version. */
    private static boolean logExists(S3Client client, String bucket, String prefix) {
        ListObjectsV2Request probe = ListObjectsV2Request.builder().bucket(bucket).prefix(prefix).maxKeys(1).build();
        return !client.listObjectsV2(probe).contents().isEmpty();
    }

    /** The key just before {@code key} in S3's byte order, so that startAfter keeps {@code key} itself. */
    static String keyBefore(String key) {
        byte[] bytes = key.getBytes(java.nio.charset.StandardCharsets.UTF_8);
        if (bytes.length == 0) {
            return null;
        }
        if (bytes[bytes.length - 1] > 0) {
            bytes[bytes.length - 1] -= 1;
            return new String(bytes, java.nio.charset.StandardCharsets.UTF_8);
        }
        return new String(bytes, 0, bytes.length - 1, java.nio.charset.StandardCharsets.UTF_8);
    }
}
