// Readiness probe for infra/kafka/kafka.sh when the project's virtualenv (and so
// kafka-python) is not available: the same describeCluster call as wait_ready.py,
// through kafka-clients from infra/kafka/libs. Run as a single-file source program:
//
//   java -cp 'infra/kafka/libs/*' infra/kafka/WaitReady.java BOOTSTRAP TIMEOUT_S [PID]
//
// Exit codes as wait_ready.py: 0 ready, 1 timeout, 2 broker process died.

import java.net.InetSocketAddress;
import java.net.Socket;
import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

public class WaitReady {
    public static void main(String[] args) throws Exception {
        if (args.length < 2 || args.length > 3) {
            System.err.println("usage: WaitReady BOOTSTRAP TIMEOUT_S [PID]");
            System.exit(64);
        }
        String bootstrap = args[0];
        long deadline = System.nanoTime() + (long) (Double.parseDouble(args[1]) * 1e9);
        Long pid = args.length == 3 ? Long.valueOf(args[2]) : null;

        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.CLIENT_ID_CONFIG, "imgov-kafka-ready");
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "3000");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "200");

        while (System.nanoTime() < deadline) {
            if (pid != null && !ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false)) {
                System.exit(2);
            }
            // The listener opens only once the broker is unfenced: check the port first so
            // that no admin client (and its reconnect backoff) is spent on a closed port.
            if (portAccepts(bootstrap)) {
                Admin admin = Admin.create(props);
                try {
                    if (!admin.describeCluster().nodes().get(3, TimeUnit.SECONDS).isEmpty()) {
                        System.exit(0);
                    }
                } catch (Exception notYet) {
                    // Metadata not served yet.
                } finally {
                    admin.close(Duration.ofMillis(500));
                }
            }
            Thread.sleep(50);
        }
        System.exit(1);
    }

    private static boolean portAccepts(String bootstrap) {
        String first = bootstrap.split(",")[0];
        int colon = first.lastIndexOf(':');
        try (Socket socket = new Socket()) {
            socket.connect(
                new InetSocketAddress(first.substring(0, colon),
                                      Integer.parseInt(first.substring(colon + 1))),
                1000);
            return true;
        } catch (Exception closed) {
            return false;
        }
    }
}
