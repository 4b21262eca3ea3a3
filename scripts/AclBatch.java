// Applies many ACL sets with Kafka's own AclCommand in one JVM, for scripts/kafka-acls: one
// JVM per set (16 sets) took 36-100 s of JVM start-ups on a loaded 2-core box.
//
// usage: java -cp "$KAFKA_HOME/lib/*" scripts/AclBatch.java CONNECTION_ARGS... < SETS
// where each line of SETS is one `kafka-acls --add` argument list (whitespace-separated, as
// `usage-aggregator acls` prints them) and CONNECTION_ARGS are --bootstrap-server HOST:PORT
// [--command-config FILE]. AclCommand exits the JVM with status 1 on the first failure.
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

public class AclBatch {
    public static void main(String[] connection) throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            line = line.trim();
            if (line.isEmpty()) {
                continue;
            }
            List<String> args = new ArrayList<>(Arrays.asList(connection));
            args.add("--add");
            args.addAll(Arrays.asList(line.split("\\s+")));
            org.apache.kafka.tools.AclCommand.main(args.toArray(new String[0]));
        }
    }
}
