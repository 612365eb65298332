package org.medstream.devstack;

import static org.neo4j.configuration.GraphDatabaseSettings.DEFAULT_DATABASE_NAME;

import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.connectors.HttpsConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.io.ByteUnit;

/**
 * Embedded Neo4j Community (5.26 LTS) for LOCAL DEVELOPMENT ONLY: Bolt on loopback, no auth, no HTTP.
 *
 * <pre>
 * java -Xms512m -Xmx1g $JFLAGS -cp 'LIBDIR/*' org.medstream.devstack.Neo4jLauncher [DATA_DIR]
 *   JFLAGS    : the --add-opens flags from NOTES.md (Java 17; without them Neo4j falls back to slow paths)
 *   DATA_DIR  : first argument, else -Dneo4j.home, else ./neo4j-data (becomes the Neo4j home: data/, logs/)
 *   -Dneo4j.bolt.port=7687       Bolt port (bound on 127.0.0.1 only)
 *   -Dneo4j.pagecache=256m       page cache size (k/m/g suffix)
 * </pre>
 *
 * Prints "READY bolt://127.0.0.1:PORT" on stdout once the default database is available, then blocks until
 * SIGTERM/SIGINT, which shuts the database down cleanly via a shutdown hook.
 */
public final class Neo4jLauncher {

    public static void main(String[] args) throws InterruptedException {
        Path home = Path.of(args.length > 0 ? args[0] : System.getProperty("neo4j.home", "neo4j-data"))
                .toAbsolutePath();
        int port = Integer.getInteger("neo4j.bolt.port", BoltConnector.DEFAULT_PORT);
        long pageCache = ByteUnit.parse(System.getProperty("neo4j.pagecache", "256m"));

        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(BoltConnector.advertised_address, new SocketAddress("127.0.0.1", port))
                .setConfig(BoltConnector.encryption_level, BoltConnector.EncryptionLevel.DISABLED)
                .setConfig(HttpConnector.enabled, false)
                .setConfig(HttpsConnector.enabled, false)
                .setConfig(GraphDatabaseSettings.auth_enabled, false) // loopback-only dev instance
                .setConfig(GraphDatabaseSettings.pagecache_memory, pageCache)
                .setConfig(GraphDatabaseSettings.keep_logical_logs, "2 files") // small tx-log retention
                .setConfig(GraphDatabaseSettings.logical_log_rotation_threshold, ByteUnit.mebiBytes(32))
                .setConfig(GraphDatabaseSettings.memory_transaction_global_max_size, ByteUnit.mebiBytes(512))
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                // Dev-only (internal settings): Netty's default graceful-shutdown quiet periods add ~10 s to SIGTERM.
                .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_quiet_period, 0)
                .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_timeout, Duration.ofSeconds(2))
                .build();

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("STOPPING");
            dbms.shutdown();
            System.out.println("STOPPED");
            stopped.countDown();
        }, "neo4j-shutdown"));

        GraphDatabaseService db = dbms.database(DEFAULT_DATABASE_NAME);
        while (!db.isAvailable(1_000)) {
            System.out.println("waiting for database '" + DEFAULT_DATABASE_NAME + "' ...");
        }
        System.out.println("READY bolt://127.0.0.1:" + port + " home=" + home);
        System.out.flush();
        stopped.await();
    }
}
